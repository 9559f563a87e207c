"""Issue #19 at CPU scale: a tiny demo-like model trained by the real trainer on the real synthetic
stream (56x56), then its camera loss on held-out sequences as a ratio to the trivial prediction
(zero translation, identity rotation; 1.00 = nothing learnt), and RPE against the trivial
cameras. Results of 2026-11-30 are in bench/exp/README.md.

    python bench/exp/camera_proxy.py --block attention --steps 600   # ~4 minutes on one core

--random-head-start keeps the camera head's old random last layer; --camera-only drops the depth
and point losses; --frames 2 2 trains on frame pairs; --lr-min-ratio 1 keeps the rate constant.
Denser cross-view signals (neither helped, see the README): --world-points W adds a training-only
DPT head of VGGT's point map (every frame's points in the first camera's frame, with confidence)
and its loss; --consistency W adds a loss on the GT camera-frame points moved into the first
camera's frame by the predicted cameras (no new weights); --motion K scales the synthetic camera
step (training and held out). --correspondence W adds a training-only InfoNCE loss that makes
the patch tokens of frame block --corr-layer (the tokens the next global block matches frames by)
of every frame i >= 1 pick their ground-truth corresponding patch among frame 0's (cosine / tau,
cross-entropy over frame 0's patches); with --corr-target attention it trains head 0 of global
attention block --corr-layer to attend so instead (its own logits). The held-out top-1 matching
accuracy of the tokens (and of the global attention) is printed whatever W. --flow W trains a
linear head on the tokens after global block --corr-layer to report each patch's motion to
frame 0. --eval-only re-evaluates --out (pass the same head options). The last line says how far
the frames depend on each other (mirror frame 0, see the others' tokens move).

Runs of 2026-11-30 (night): --oracle-motion adds each patch's GT motion to frame 0 to its embedding
(the upper bound: do cameras follow once the tokens know the motion?); --value-rope is the model's
config value_rope; --corr-keys all trains the attention head over every token of every frame (not
only frame 0's patches); --mark-reference adds a learned vector to frame 0's patches;
--flow-inject adds the flow head's prediction back into the tokens. --device cuda --minutes M
--threads T run it on a GPU machine (`.dev`-style calls of 4-8 variants at once, see the README).
"""

import argparse
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import zipmap_core.training.trainer as trainer
from zipmap_core.checkpoint import load_checkpoint
from zipmap_core.config import PRESETS, DPTConfig, ModelConfig, TTTConfig
from zipmap_core.evaluation.metrics import camera_metrics
from zipmap_core.geometry import local_to_world, pose_encoding_to_cameras
from zipmap_core.heads.dpt_head import DPTHead
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.synthetic import generate, generate_sequence
from zipmap_core.training import LossWeights, TrainConfig, train
from zipmap_core.training.data import Batch, batch_from_sequences
from zipmap_core.training.losses import (
    Targets,
    _masked_mean,
    camera_loss,
    gradient_loss,
    make_targets,
    total_loss,
)
from zipmap_core.training.trainer import forward_for_training

p = argparse.ArgumentParser()
p.add_argument("--block", default="attention", choices=["attention", "ttt"])
p.add_argument("--steps", type=int, default=600)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--lr-min-ratio", type=float, default=0.0)
p.add_argument("--patch", type=int, default=7)
p.add_argument("--frames", type=int, nargs=2, default=(2, 6))
p.add_argument("--camera-kind", default="l1", choices=["l1", "huber"])
p.add_argument("--camera-only", action="store_true")
p.add_argument("--random-head-start", action="store_true")
p.add_argument("--world-points", type=float, default=0.0, help="weight of the first-camera-frame point head (0: none)")
p.add_argument("--consistency", type=float, default=0.0, help="weight of the camera-consistency loss")
p.add_argument("--correspondence", type=float, default=0.0, help="weight of the patch-correspondence loss")
p.add_argument("--corr-layer", type=int, default=0, help="the frame block whose output patch tokens it trains")
p.add_argument("--corr-tau", type=float, default=0.1, help="its temperature (cosine / tau)")
p.add_argument("--corr-target", default="tokens", choices=["tokens", "attention"],
               help="tokens: cosine of frame block --corr-layer's patch tokens; attention: head 0's logits in "
                    "global attention block --corr-layer")
p.add_argument("--corr-keys", default="frame0", choices=["frame0", "all"],
               help="attention target: softmax over frame 0's patches only, or over every token of every frame")
p.add_argument("--mark-reference", action="store_true",
               help="add a learned vector to frame 0's patch embeddings (patches cannot tell the reference frame else)")
p.add_argument("--flow", type=float, default=0.0,
               help="weight of a linear head's L1 loss on each patch's motion to frame 0 (tokens after global block "
                    "--corr-layer)")
p.add_argument("--oracle-noise", type=float, default=0.0,
               help="std (patches) of Gaussian noise on the oracle's motion: how exact must the motion be?")
p.add_argument("--oracle-keep-only", action="store_true",
               help="the oracle's motion zeroed: only whether each patch's match holds (a control for the oracle)")
p.add_argument("--flow-inject", choices=["head", "match"], default=None,
               help="add a projection of a motion estimate to the tokens after that global block: the flow head's "
                    "prediction, or the expected displacement under the matching head's attention over frame 0")
p.add_argument("--value-rope", action="store_true",
               help="global blocks rotate their values by position (config value_rope)")
p.add_argument("--oracle-motion", action="store_true",
               help="add a learned projection of each patch's GT motion to frame 0 to its embedding (an upper bound: "
                    "do cameras follow once the tokens know the motion?)")
p.add_argument("--init", default=None, help="fine-tune this checkpoint of the same proxy (strict load)")
p.add_argument("--reset-camera-head", action="store_true", help="with --init: start the camera head afresh")
p.add_argument("--device", default="cpu", help="training device (the held-out evaluation runs on the CPU)")
p.add_argument("--minutes", type=float, default=None, help="training-time budget (the schedule follows it)")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--motion", type=float, default=1.0, help="scale the synthetic camera step (training and held out)")
p.add_argument("--eval-only", action="store_true", help="evaluate --out as trained by an earlier run")
p.add_argument("--out", default="/tmp/camera_proxy.safetensors")
a = p.parse_args()
torch.set_num_threads(a.threads)

PRESETS["proxy"] = ModelConfig(
    name="proxy", img_size=56, patch_size=a.patch, embed_dim=64, depth=4, num_heads=4, patch_embed="conv",
    ttt=TTTConfig(head_dim=64), global_block=a.block, camera_trunk_depth=1, camera_num_heads=4,
    layer_scale_init=1.0, patch_positions=True, value_rope=a.value_rope,
    dpt=DPTConfig(features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3), hidden=8),
)


class ProxyModel(ZipMap):
    """The proxy network; with --world-points, plus a DPT head of points in the first camera's frame.
    Keeps the last aggregator call's layers and conv patch embedding (for the extra losses and probes)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.layers: dict[int, Tensor] = {}
        self.embedding: Tensor | None = None  # [B * S, P, C], before the patch positions
        if a.world_points > 0:
            d = config.dpt
            self.world_point_head = DPTHead(
                2 * config.embed_dim, 4, "linear", "expp1", config.patch_size, d.features, d.out_channels, d.hidden
            )
        if a.flow > 0:
            self.flow_head = nn.Linear(config.embed_dim, 2)
        self.flow_pred: Tensor | None = None  # [B, S, N, 2] of the last call, before the injection
        if a.flow_inject:
            self.flow_embed = nn.Linear(2, config.embed_dim)
            self.aggregator.global_blocks[a.corr_layer].register_forward_hook(lambda _m, _i, out: self.inject(out))
        self.frames = 0  # of the last aggregator call
        self.image_hw: tuple[int, int] = (0, 0)
        self.aggregator.register_forward_pre_hook(lambda _m, args: self.__dict__.update(
            frames=args[0].shape[1], image_hw=tuple(args[0].shape[-2:])))
        if a.mark_reference:
            self.reference_mark = nn.Parameter(torch.zeros(config.embed_dim))
            self.aggregator.patch_embed.register_forward_hook(lambda _m, _i, out: self.marked(out))
        self.oracle: Tensor | None = None  # [B, S, N, 3]: GT motion (x, y) and whether it holds, per patch
        if a.oracle_motion:
            self.oracle_proj = nn.Linear(3, config.embed_dim)
            self.aggregator.patch_embed.register_forward_hook(lambda _m, _i, out: out + self.oracle_embedding(out))
        self.aggregator.register_forward_hook(lambda _m, _i, out: setattr(self, "layers", out[0]))
        self.aggregator.patch_embed.register_forward_hook(lambda _m, _i, out: setattr(self, "embedding", out))
        self.attention_inputs: dict[int, tuple] = {}  # global attention block -> its (normed tokens, rope)
        if config.global_block == "attention":
            for i, block in enumerate(self.aggregator.global_blocks):
                block.attn.register_forward_pre_hook(lambda _m, args, i=i: self.attention_inputs.__setitem__(i, args))

    def inject(self, out):
        """Global block --corr-layer's output with its predicted motion (frames 1..) projected into the patches."""
        x, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, None)
        tokens = x.unflatten(1, (self.frames, -1))
        start = self.config.patch_start_idx
        flow = self.match_flow() if a.flow_inject == "match" else self.flow_head(tokens[:, :, start:].float())
        flow = torch.cat([torch.zeros_like(flow[:, :1]), flow[:, 1:]], 1)  # frame 0 does not move
        self.flow_pred = flow
        patches = tokens[:, :, start:] + self.flow_embed(flow).to(x)
        x = torch.cat([tokens[:, :, :start], patches], 2).flatten(1, 2)
        return x if rest is None else (x, *rest)

    def match_flow(self) -> Tensor:
        """[B, S, N, 2] (frame 0's rows unused): each patch's expected displacement (x, y in patches) to frame 0
        under head 0 of global attention block --corr-layer, its weights renormalised over frame 0's patches."""
        logits = self.attention_logits(a.corr_layer)[:, 0]
        N = logits.shape[2]
        if a.corr_keys == "all":
            logits = logits[..., self.config.patch_start_idx:self.config.patch_start_idx + N]
        gw = self.image_hw[1] // self.config.patch_size
        cells = torch.arange(N, device=logits.device)
        grid = torch.stack([cells % gw, cells // gw], -1).float()  # x, y of each patch
        flow = logits.softmax(-1) @ grid - grid
        return torch.cat([torch.zeros_like(flow[:, :1]), flow], 1)

    def marked(self, patches: Tensor) -> Tensor:
        """The patch embedding [B * S, N, C] with the reference mark added to frame 0's patches."""
        first = torch.zeros(patches.shape[0] // self.frames, self.frames, 1, 1, device=patches.device)
        first[:, 0] = 1
        return patches + first.flatten(0, 1) * self.reference_mark.to(patches)

    def oracle_embedding(self, patches: Tensor) -> Tensor:
        """The projected GT motion of the batch set in `oracle`, shaped like the patch embedding [B * S, N, C]
        (nothing for another batch, e.g. the trainer's cross-frame probe)."""
        if self.oracle is None or self.oracle.shape[0] * self.oracle.shape[1] != patches.shape[0]:
            return torch.zeros_like(patches)
        return self.oracle_proj(self.oracle.to(patches)).flatten(0, 1)

    def set_oracle(self, batch: Batch) -> None:
        if not a.oracle_motion:
            return
        B, S = batch.images.shape[:2]
        N = (batch.images.shape[-2] // self.config.patch_size) * (batch.images.shape[-1] // self.config.patch_size)
        oracle = torch.zeros(B, S, N, 3, device=batch.images.device)
        if S > 1:
            _, keep, motion = correspondences(batch, self.config.patch_size)
            noisy = motion + a.oracle_noise * torch.randn_like(motion)
            if a.oracle_keep_only:
                noisy = torch.zeros_like(motion)
            oracle[:, 1:] = torch.cat([noisy * keep[..., None], keep[..., None].float()], -1)
        self.oracle = oracle

    def patch_tokens(self, which: str) -> Tensor:
        """Of the last aggregator call: patch tokens [B, S, N, C] of 'embed' (the conv patch embedding),
        'frame' (frame block --corr-layer's output) or 'global' (the global block's after it)."""
        if which == "embed":
            B, S = self.layers[self.config.depth - 1].shape[:2]
            return self.embedding.unflatten(0, (B, S))
        C, start = self.config.embed_dim, self.config.patch_start_idx
        x = self.layers[a.corr_layer][:, :, start:]
        return x[..., :C] if which == "frame" else x[..., C:]

    def attention_logits(self, i: int) -> Tensor:
        """Of the last aggregator call: global attention block i's logits (q.k / sqrt(d), as its softmax
        sees them) of the patches of frames 1.. over frame 0's patches [B, heads, S-1, N, N]."""
        x, rope = self.attention_inputs[i]
        attn = self.aggregator.global_blocks[i].attn
        B, S = x.shape[0], self.frames  # of the current call (this may run inside it)
        q, k, _ = attn.qkv(x).reshape(B, x.shape[1], 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.rope is not None and rope is not None:
            q, k = attn.rope(q, rope), attn.rope(k, rope)
        start = self.config.patch_start_idx
        if a.corr_keys == "all":  # [B, heads, S-1, N, S * P]: every key, frame 0's patches at start..start+N
            q = q.unflatten(2, (S, -1))[:, :, 1:, start:]
            return torch.einsum("bhsnd,bhmd->bhsnm", q.float(), k.float()) * attn.head_dim ** -0.5
        q, k = q.unflatten(2, (S, -1))[:, :, 1:, start:], k.unflatten(2, (S, -1))[:, :, 0, start:]
        return torch.einsum("bhsnd,bhmd->bhsnm", q.float(), k.float()) * attn.head_dim ** -0.5

    def world_points(self, image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Of the last aggregator call: points [B, S, H, W, 3] in frame 0's frame, confidence [B, S, H, W]."""
        tokens = [self.layers[i].float() for i in self.config.dpt.layers]
        return self.world_point_head(tokens, image_hw, self.config.patch_start_idx)


def in_first_frame(pose_enc: Tensor, targets: Targets) -> Tensor:
    """The GT camera-frame points [B, S, H, W, 3] moved into the first camera's frame by cameras
    [B, S, 9] relative to it (the targets' own cameras give the GT points there), 0 where invalid."""
    extrinsics, _ = pose_encoding_to_cameras(pose_enc.float(), tuple(targets.depth.shape[-2:]))
    moved = local_to_world(targets.points, extrinsics)
    return torch.where(targets.valid[..., None], moved, torch.zeros_like(moved))


def correspondences(batch: Batch, patch: int, occlusion: float = 0.05) -> tuple[Tensor, Tensor, Tensor]:
    """Ground-truth patch matches of frames 1.. in frame 0: for each patch centre of frame i >= 1,
    the index of the frame-0 patch its GT world point projects into [B, S-1, N] and whether the
    match holds [B, S-1, N] (the centre pixel valid, the point in front of frame 0 and inside it,
    on a valid frame-0 pixel and not occluded there: its frame-0 depth at most `occlusion` (relative)
    beyond frame 0's GT depth at the nearest pixel), and its motion [B, S-1, N, 2] (where it lands in
    frame 0 minus where it is, in patches, x then y). Pixel (v, u) sits at image coordinate (u, v)."""
    B, S, H, W = batch.depth.shape
    c = (patch - 1) // 2
    gh, gw = H // patch, W // patch
    centres = batch.world_points[:, 1:, c::patch, c::patch][:, :, :gh, :gw].reshape(B, S - 1, -1, 3)
    valid = batch.valid[:, 1:, c::patch, c::patch][:, :, :gh, :gw].reshape(B, S - 1, -1)
    R, t, K = batch.extrinsics[:, 0, :, :3], batch.extrinsics[:, 0, :, 3], batch.intrinsics[:, 0]
    cam = torch.einsum("bij,bsnj->bsni", R, centres) + t[:, None, None]
    z = cam[..., 2]
    z_safe = z.clamp_min(1e-6)
    u = K[:, None, None, 0, 0] * cam[..., 0] / z_safe + K[:, None, None, 0, 2]
    v = K[:, None, None, 1, 1] * cam[..., 1] / z_safe + K[:, None, None, 1, 2]
    inside = (z > 1e-6) & (u >= -0.5) & (u < W - 0.5) & (v >= -0.5) & (v < H - 0.5)
    pu = u.round().clamp(0, W - 1).long()
    pv = v.round().clamp(0, H - 1).long()
    flat = (pv * W + pu).flatten(1)
    depth0 = batch.depth[:, 0].flatten(1).gather(1, flat).view_as(z)
    valid0 = batch.valid[:, 0].flatten(1).gather(1, flat).view_as(z)
    keep = valid & inside & valid0 & (z <= depth0 * (1 + occlusion))
    index = (pv // patch).clamp(max=gh - 1) * gw + (pu // patch).clamp(max=gw - 1)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    here = torch.stack([cols, rows], -1).reshape(-1, 2).to(u) * patch + c
    return index, keep, (torch.stack([u, v], -1) - here) / patch


def match_logits(tokens: Tensor) -> Tensor:
    """Patch tokens [B, S, N, C] -> cosine similarities [B, S-1, N, N] of frames 1.. to frame 0's patches."""
    f = F.normalize(tokens.float(), dim=-1)
    return torch.einsum("bsnc,bmc->bsnm", f[:, 1:], f[:, 0])


def correspondence_loss(logits: Tensor, index: Tensor, keep: Tensor) -> Tensor:
    """InfoNCE over frame 0's patches: cross-entropy of logits [B, S-1, N, N] against the GT patch,
    mean over the matches that hold."""
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep], index[keep])


def proxy_batch_loss(model: ProxyModel, batch: Batch, weights: LossWeights, bf16: bool = True):
    """trainer.batch_loss plus the cross-view terms: VGGT's point-map loss (conf * L1 - alpha *
    log conf, and the conf-weighted gradient term) and the camera-consistency loss."""
    targets = make_targets(batch.depth, batch.valid, batch.extrinsics, batch.intrinsics, batch.world_points)
    model.set_oracle(batch)
    outputs = forward_for_training(model, batch.images)
    loss, terms = total_loss(outputs, targets, weights)
    world, valid = in_first_frame(targets.pose_enc, targets), targets.valid
    extra: dict[str, Tensor] = {}
    if a.world_points > 0:
        points, conf = model.world_points(tuple(batch.images.shape[-2:]))
        diff = points - world
        extra["world_points"] = a.world_points * _masked_mean(conf * diff.abs().sum(-1) - 0.2 * conf.log(), valid)
        extra["world_points_grad"] = a.world_points * gradient_loss(diff, valid, conf)
    if a.consistency > 0:
        moved = in_first_frame(outputs["pose_enc"], targets)
        extra["consistency"] = a.consistency * _masked_mean((moved - world).abs().sum(-1), valid)
    if a.correspondence > 0 and batch.images.shape[1] > 1:
        index, keep, _ = correspondences(batch, model.config.patch_size)
        if a.corr_target == "tokens":
            logits = match_logits(model.patch_tokens("frame")) / a.corr_tau
        else:  # one head of the global block: its own attention logits, no temperature of ours
            logits = model.attention_logits(a.corr_layer)[:, 0]
            index = index + (model.config.patch_start_idx if a.corr_keys == "all" else 0)
        extra["correspondence"] = a.correspondence * correspondence_loss(logits, index, keep)
    if a.flow > 0 and batch.images.shape[1] > 1:
        _, keep, motion = correspondences(batch, model.config.patch_size)
        flow = model.flow_pred[:, 1:] if a.flow_inject else model.flow_head(model.patch_tokens("global")[:, 1:].float())
        extra["flow"] = a.flow * _masked_mean((flow - motion).abs().sum(-1), keep)
    return loss + sum(extra.values()), {**terms, **{k: v.detach() for k, v in extra.items()}}


if a.random_head_start:  # the init before 2026-11-30: biases only, random last-layer weights
    zero_start = trainer.init_pose_output

    def random_start(model: ZipMap, fov: float = 1.0) -> None:
        last = [m for m in model.pose_head.modules() if isinstance(m, nn.Linear) and m.out_features == 9][-1]
        weight = last.weight.detach().clone()
        zero_start(model, fov)
        with torch.no_grad():
            last.weight.copy_(weight)

    trainer.init_pose_output = random_start
if a.motion != 1.0:
    path = generate.camera_path
    generate.camera_path = lambda kind, rng, layout, n: path(kind, rng, replace(layout, step=a.motion * layout.step), n)
if a.reset_camera_head:
    load = trainer.load_checkpoint

    def load_with_fresh_camera_head(model: ZipMap, path: str) -> ZipMap:
        load(model, path)
        for m in model.pose_head.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        trainer.init_pose_output(model)
        return model

    trainer.load_checkpoint = load_with_fresh_camera_head
trainer.ZipMap = ProxyModel
trainer.batch_loss = proxy_batch_loss

weights = LossWeights(camera_kind=a.camera_kind, **({"depth": 0.0, "points": 0.0} if a.camera_only else {}))
if not a.eval_only:
    train(TrainConfig(
        preset="proxy", out=a.out, device=a.device, init=a.init, steps=a.steps, minutes=a.minutes,
        lr=a.lr, lr_min_ratio=a.lr_min_ratio, warmup_steps=50,
        log_every=100, ckpt_every=0, seed=a.seed, save_dtype="float32", min_frames=a.frames[0], max_frames=a.frames[1],
        frames_per_batch=24, pool_size=64, pool_frames=8, new_per_step=0.5, aspect_crops=False, loss=weights,
    ))
model = load_checkpoint(ProxyModel(PRESETS["proxy"]), a.out).eval()
sequences = [generate_sequence(seed, num_frames=6, height=56, width=56) for seed in range(64)]  # held out
def rpe(pose_enc: torch.Tensor, targets: torch.Tensor) -> str:
    """Mean RPE-t and RPE-r (degrees) over the sequences, of predicted cameras [B, S, 9] against the targets."""
    def mean(key: str, enc: torch.Tensor) -> float:
        cams = [(pose_encoding_to_cameras(p, (56, 56))[0], pose_encoding_to_cameras(t, (56, 56))[0])
                for p, t in zip(enc, targets)]
        return sum(camera_metrics(p, t)[key] for p, t in cams) / len(cams)
    return " ".join(f"{k} {mean(k, pose_enc):.4f}" for k in ("rpe_trans", "rpe_rot_deg"))


for frames in (list(range(6)), [0, 3]):
    b = batch_from_sequences(sequences, [frames] * len(sequences))
    targets = make_targets(b.depth, b.valid, b.extrinsics, b.intrinsics, b.world_points)
    target = targets.pose_enc
    model.set_oracle(b)
    with torch.no_grad():
        out = forward_for_training(model, b.images)
        if a.world_points > 0:
            out["world_points"] = model.world_points((56, 56))[0]
    pred = out["pose_enc"]
    trivial = target.clone()
    trivial[..., :3] = 0.0
    trivial[..., 3:7] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    lm, lt = camera_loss(pred, target), camera_loss(trivial, target)
    ratios = " ".join(f"{k} {float(lm[k]):.4f} / trivial {float(lt[k]):.4f} = {float(lm[k] / lt[k]):.2f}"
                      for k in ("camera_T", "camera_R"))
    spread = f"pred T std {float(pred[:, 1:, :3].std()):.4f}, target {float(target[:, 1:, :3].std()):.4f}"
    print(f"held-out frames {frames}: {ratios}; {spread}")
    print(f"  model: {rpe(pred, target)}; trivial: {rpe(trivial, target)}")
    if a.world_points > 0:  # did the head relate frames? against the local points taken as if nothing moved
        world = in_first_frame(target, targets)[:, 1:]

        def err(x: torch.Tensor, w=world, t=targets) -> float:
            return float((x[:, 1:] - w).abs().sum(-1)[t.valid[:, 1:]].mean())
        print(f"  first-frame points, frames 1..: head {err(out['world_points']):.4f}, "
              f"its local points (no motion) {err(out['local_points']):.4f}, GT local points {err(targets.points):.4f}")

# is the pose in the last layer at all? a ridge probe of frames 1..'s target pose (translation, quaternion) from
# each frame's camera token and from the mean of its patch tokens, fitted and scored as motion_r2 (the camera
# head may not read what is there)
with torch.no_grad():
    b = batch_from_sequences(sequences, [list(range(6))] * len(sequences))
    model.set_oracle(b)
    last = model.aggregator(b.images)[0][model.config.depth - 1][:, 1:].float()
start = model.config.patch_start_idx
pose = make_targets(b.depth, b.valid, b.extrinsics, b.intrinsics, b.world_points).pose_enc[:, 1:, :7].double()


def pose_r2(features: Tensor, ridge: float, dims: slice = slice(0, 3)) -> float:
    """Held-out R^2 of the target pose's components `dims` (translation; 3:6 the quaternion's vector part)."""
    half = len(sequences) // 2
    x = torch.cat([features, torch.ones_like(features[..., :1])], -1).double()
    xf, yf = x[:half].flatten(0, 1), pose[:half].flatten(0, 1)
    xs, ys = x[half:].flatten(0, 1), pose[half:].flatten(0, 1)
    w = torch.linalg.solve(xf.T @ xf + ridge * len(xf) * torch.eye(x.shape[-1], dtype=x.dtype), xf.T @ yf)
    return float((1 - ((xs @ w - ys) ** 2).sum(0) / ((ys - ys.mean(0)) ** 2).sum(0))[dims].mean())


camera_tokens, mean_patches = last[:, :, 0], last[:, :, start:].mean(2)
for ridge in (1.0, 10.0):  # 160 frames to fit 2C + 1 weights: strong ridges
    print(f"held-out R^2 of frames 1..'s translation / rotation from the last layer (ridge {ridge:g}): camera token "
          f"{pose_r2(camera_tokens, ridge):.2f} / {pose_r2(camera_tokens, ridge, slice(3, 6)):.2f}, mean patch token "
          f"{pose_r2(mean_patches, ridge):.2f} / {pose_r2(mean_patches, ridge, slice(3, 6)):.2f}")


if a.oracle_motion:  # the probes below feed the model batches without the oracle
    raise SystemExit

# can frames be matched by their tokens? top-1 of each patch of frames 1.. among frame 0's patches against the
# GT match (chance 1 / N; "same place" predicts no motion, the patch at the same grid position)
b = batch_from_sequences(sequences, [list(range(6))] * len(sequences))
index, keep, motion = correspondences(b, model.config.patch_size)
with torch.no_grad():
    model.aggregator(b.images)
    found = {w: match_logits(model.patch_tokens(w)).argmax(-1) for w in ("embed", "frame", "global")}
same = torch.arange(index.shape[-1]).expand_as(index)
accuracy = " ".join(f"{w} {float((found[w] == index)[keep].float().mean()):.3f}" for w in found)
print(f"held-out top-1 matching of frames 1..5 to frame 0 ({int(keep.sum())} matches, {keep.float().mean():.2f} "
      f"of patches), layer {a.corr_layer}: {accuracy}; same place {float((same == index)[keep].float().mean()):.3f}, "
      f"chance {1 / index.shape[-1]:.3f}")


if a.block == "attention":  # does global attention itself match? top-1 over frame 0's patches, per block
    attended = []
    with torch.no_grad():
        for i in range(0, len(sequences), 16):
            model.aggregator(b.images[i:i + 16])
            logits = [model.attention_logits(j) for j in range(model.config.depth)]
            shift = model.config.patch_start_idx if a.corr_keys == "all" else 0  # all keys: frame 0's patches first
            attended.append([(x.softmax(-1).mean(1).argmax(-1) - shift, x[:, 0].argmax(-1) - shift) for x in logits])

    def top1(found: list[Tensor]) -> str:
        return f"{float((torch.cat(found) == index)[keep].float().mean()):.3f}"
    print("  global attention's top-1 over frame 0, blocks 0..: heads' mean "
          + " ".join(top1([r[j][0] for r in attended]) for j in range(model.config.depth))
          + "; head 0 " + " ".join(top1([r[j][1] for r in attended]) for j in range(model.config.depth)))

# do the tokens of frames 1.. know where their content is in frame 0? a ridge probe of each patch token's motion
# to its match (in patches) from the tokens of each layer (after its global block), fitted on half of the held-out
# sequences and scored (R^2, x and y averaged) on the other half; frame block 0's output has seen no other frame,
# so what it explains (from a patch's position and content alone) is the floor


def motion_r2(tokens: Tensor, ridge: float = 1e-2) -> float:
    half = len(sequences) // 2
    x = torch.cat([tokens[:, 1:], torch.ones_like(tokens[:, 1:, ..., :1])], -1).double()
    y = motion.double()
    fit, score = (slice(None, half), slice(half, None))
    xf, yf = x[fit][keep[fit]], y[fit][keep[fit]]
    w = torch.linalg.solve(xf.T @ xf + ridge * len(xf) * torch.eye(x.shape[-1], dtype=x.dtype), xf.T @ yf)
    xs, ys = x[score][keep[score]], y[score][keep[score]]
    return float((1 - ((xs @ w - ys) ** 2).sum(0) / ((ys - ys.mean(0)) ** 2).sum(0)).mean())


with torch.no_grad():
    layers, _ = model.aggregator(b.images)
C, start = model.config.embed_dim, model.config.patch_start_idx
print(f"  held-out R^2 of the patches' motion to frame 0 (std {float(motion[keep].std(0).mean()):.2f} patches) "
      "from the tokens after each global block: "
      + " ".join(f"{motion_r2(layers[i][:, :, start:, C:].float()):.2f}" for i in sorted(layers))
      + f"; control without cross-frame information (frame block 0): {motion_r2(layers[0][:, :, start:, :C]):.2f}")
if a.flow > 0:  # per patch the flow head may only have learnt a prior of each position; per frame, what is left?
    with torch.no_grad():
        model.aggregator(b.images)
        flow = model.flow_pred if a.flow_inject else model.flow_head(model.patch_tokens("global").float())
    flow = flow[:, 1:].double()
    per_patch = 1 - ((flow - motion) ** 2)[keep].sum(0) / ((motion - motion[keep].mean(0)) ** 2)[keep].sum(0)
    weight = keep[..., None].double()
    mean_pred = (flow * weight).sum(2) / weight.sum(2).clamp_min(1)  # [B, S-1, 2] over the patches that match
    mean_true = (motion.double() * weight).sum(2) / weight.sum(2).clamp_min(1)
    per_frame = 1 - ((mean_pred - mean_true) ** 2).sum((0, 1)) / ((mean_true - mean_true.mean((0, 1))) ** 2).sum((0, 1))
    print(f"  flow head on held-out frames, R^2 (x, y averaged) per patch {float(per_patch.mean()):.2f}, "
          f"of each frame's mean motion {float(per_frame.mean()):.2f}")

# does the aggregator relate frames at all? mirror frame 0 and measure how much the other frames' last-layer
# tokens move (relative norm; the mirrored frame's own tokens move by ~0.3-0.6)
b = batch_from_sequences(sequences[:16], [list(range(6))] * 16)
mirrored = b.images.clone()
mirrored[:, 0] = mirrored[:, 0].flip(-1)
with torch.no_grad():
    last = model.config.depth - 1
    before, after = model.aggregator(b.images)[0][last][:, 1:], model.aggregator(mirrored)[0][last][:, 1:]
print(f"cross-frame influence: mirroring frame 0 moves the other frames' last-layer tokens by "
      f"{float((after - before).norm() / before.norm()):.4f}")


