"""Issue #19 at CPU scale: a tiny demo-like model trained by the real trainer on the real synthetic
stream (56x56), then its camera loss on held-out sequences as a ratio to the trivial prediction
(zero translation, identity rotation; 1.00 = nothing learnt), and RPE against the trivial
cameras. Results of 2026-11-30 are in zipmap_core/assets/README.md.

    python bench/exp/camera_proxy.py --block attention --steps 600   # ~4 minutes on one core

--random-head-start keeps the camera head's old random last layer; --camera-only drops the depth
and point losses; --frames 2 2 trains on frame pairs; --lr-min-ratio 1 keeps the rate constant.
Denser cross-view signals (neither helped, see the README): --world-points W adds a training-only
DPT head of VGGT's point map (every frame's points in the first camera's frame, with confidence)
and its loss; --consistency W adds a loss on the GT camera-frame points moved into the first
camera's frame by the predicted cameras (no new weights); --motion K scales the synthetic camera
step (training and held out). --eval-only re-evaluates --out. The
last line says how far the frames depend on each other (mirror frame 0, see the others' tokens move).
"""

import argparse
from dataclasses import replace

import torch
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
p.add_argument("--seed", type=int, default=0)
p.add_argument("--motion", type=float, default=1.0, help="scale the synthetic camera step (training and held out)")
p.add_argument("--eval-only", action="store_true", help="evaluate --out as trained by an earlier run")
p.add_argument("--out", default="/tmp/camera_proxy.safetensors")
a = p.parse_args()
torch.set_num_threads(1)

PRESETS["proxy"] = ModelConfig(
    name="proxy", img_size=56, patch_size=a.patch, embed_dim=64, depth=4, num_heads=4, patch_embed="conv",
    ttt=TTTConfig(head_dim=64), global_block=a.block, camera_trunk_depth=1, camera_num_heads=4,
    layer_scale_init=1.0, patch_positions=True,
    dpt=DPTConfig(features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3), hidden=8),
)


class ProxyModel(ZipMap):
    """The proxy network; with --world-points, plus a DPT head of points in the first camera's frame."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.layers: dict[int, Tensor] = {}
        if a.world_points > 0:
            d = config.dpt
            self.world_point_head = DPTHead(
                2 * config.embed_dim, 4, "linear", "expp1", config.patch_size, d.features, d.out_channels, d.hidden
            )
            self.aggregator.register_forward_hook(lambda _m, _i, out: setattr(self, "layers", out[0]))

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


def proxy_batch_loss(model: ProxyModel, batch: Batch, weights: LossWeights, bf16: bool = True):
    """trainer.batch_loss plus the cross-view terms: VGGT's point-map loss (conf * L1 - alpha *
    log conf, and the conf-weighted gradient term) and the camera-consistency loss."""
    targets = make_targets(batch.depth, batch.valid, batch.extrinsics, batch.intrinsics, batch.world_points)
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
trainer.ZipMap = ProxyModel
trainer.batch_loss = proxy_batch_loss

weights = LossWeights(camera_kind=a.camera_kind, **({"depth": 0.0, "points": 0.0} if a.camera_only else {}))
if not a.eval_only:
    train(TrainConfig(
        preset="proxy", out=a.out, device="cpu", steps=a.steps, lr=a.lr, lr_min_ratio=a.lr_min_ratio, warmup_steps=50,
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

