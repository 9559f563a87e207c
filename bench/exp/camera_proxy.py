"""Issue #19 at CPU scale: a tiny demo-like model trained by the real trainer on the real synthetic
stream (56x56), then its camera loss on held-out sequences as a ratio to the trivial prediction
(zero translation, identity rotation; 1.00 = nothing learnt). Results of 2026-11-30 are in
zipmap_core/assets/README.md.

    python bench/exp/camera_proxy.py --block attention --steps 600   # ~4 minutes on one core

--random-head-start keeps the camera head's old random last layer; --camera-only drops the depth
and point losses; --frames 2 2 trains on frame pairs; --lr-min-ratio 1 keeps the rate constant.
"""

import argparse

import torch
from torch import nn

import zipmap_core.training.trainer as trainer
from zipmap_core.checkpoint import load_checkpoint
from zipmap_core.config import PRESETS, DPTConfig, ModelConfig, TTTConfig
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.synthetic import generate_sequence
from zipmap_core.training import LossWeights, TrainConfig, train
from zipmap_core.training.data import batch_from_sequences
from zipmap_core.training.losses import camera_loss, make_targets

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
p.add_argument("--out", default="/tmp/camera_proxy.safetensors")
a = p.parse_args()
torch.set_num_threads(1)

PRESETS["proxy"] = ModelConfig(
    name="proxy", img_size=56, patch_size=a.patch, embed_dim=64, depth=4, num_heads=4, patch_embed="conv",
    ttt=TTTConfig(head_dim=64), global_block=a.block, camera_trunk_depth=1, camera_num_heads=4,
    layer_scale_init=1.0, patch_positions=True,
    dpt=DPTConfig(features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3), hidden=8),
)
if a.random_head_start:  # the init before 2026-11-30: biases only, random last-layer weights
    zero_start = trainer.init_pose_output

    def random_start(model: ZipMap, fov: float = 1.0) -> None:
        last = [m for m in model.pose_head.modules() if isinstance(m, nn.Linear) and m.out_features == 9][-1]
        weight = last.weight.detach().clone()
        zero_start(model, fov)
        with torch.no_grad():
            last.weight.copy_(weight)

    trainer.init_pose_output = random_start

weights = LossWeights(camera_kind=a.camera_kind, **({"depth": 0.0, "points": 0.0} if a.camera_only else {}))
train(TrainConfig(
    preset="proxy", out=a.out, device="cpu", steps=a.steps, lr=a.lr, lr_min_ratio=a.lr_min_ratio, warmup_steps=50,
    log_every=100, ckpt_every=0, save_dtype="float32", min_frames=a.frames[0], max_frames=a.frames[1],
    frames_per_batch=24, pool_size=64, pool_frames=8, new_per_step=0.5, aspect_crops=False, loss=weights,
))
model = load_checkpoint(ZipMap(PRESETS["proxy"]), a.out).eval()
sequences = [generate_sequence(seed, num_frames=6, height=56, width=56) for seed in range(64)]  # held out
for frames in (list(range(6)), [0, 3]):
    b = batch_from_sequences(sequences, [frames] * len(sequences))
    target = make_targets(b.depth, b.valid, b.extrinsics, b.intrinsics, b.world_points).pose_enc
    with torch.no_grad():
        layers, _ = model.aggregator(b.images)
        pred = model.pose_head(layers[model.config.depth - 1][:, :, 0], model.config.camera_iterations)[-1]
    trivial = target.clone()
    trivial[..., :3] = 0.0
    trivial[..., 3:7] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    lm, lt = camera_loss(pred, target), camera_loss(trivial, target)
    ratios = " ".join(f"{k} {float(lm[k]):.4f} / trivial {float(lt[k]):.4f} = {float(lm[k] / lt[k]):.2f}"
                      for k in ("camera_T", "camera_R"))
    spread = f"pred T std {float(pred[:, 1:, :3].std()):.4f}, target {float(target[:, 1:, :3].std()):.4f}"
    print(f"held-out frames {frames}: {ratios}; {spread}")
