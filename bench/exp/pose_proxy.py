"""Proxy for issue #19: can a small demo-like network learn the relative pose of frame pairs of
held-out synthetic scenes? CPU, tiny images. Prints held-out camera errors vs the trivial (identity)."""
import argparse
import math
import os
import tempfile
import time

import torch
from torch import nn

from zipmap_core.config import DPTConfig, ModelConfig, TTTConfig
from zipmap_core.evaluation.metrics import rotation_angle_deg
from zipmap_core.geometry import quaternion_to_matrix
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.synthetic import generate_sequence
from zipmap_core.training.data import batch_from_sequences
from zipmap_core.training.losses import camera_loss, make_targets
from zipmap_core.training.trainer import init_pose_output, lr_factor, make_optimizer

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=56)
p.add_argument("--patch", type=int, default=7)
p.add_argument("--dim", type=int, default=96)
p.add_argument("--depth", type=int, default=8)
p.add_argument("--block", default="ttt")
p.add_argument("--train-scenes", type=int, default=600)
p.add_argument("--test-scenes", type=int, default=64)
p.add_argument("--frames", type=int, default=8)
p.add_argument("--seq", type=int, default=2, help="frames per training sample")
p.add_argument("--batch", type=int, default=16)
p.add_argument("--steps", type=int, default=400)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--warmup", type=int, default=50)
p.add_argument("--pos", default="none", help="none | learned | sincos: absolute patch position in the embedding")
p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pose_proxy"), help="rendered sequences")
p.add_argument("--eval-every", type=int, default=100)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--ls", type=float, default=0.01, help="layer_scale_init")
p.add_argument("--zero-head", action="store_true", help="zero-init the camera head's output weights")
a = p.parse_args()
torch.set_num_threads(1)
os.makedirs(a.cache, exist_ok=True)


def render(seeds, name):
    path = f"{a.cache}/{name}_{a.size}_{a.frames}_{len(seeds)}_{seeds[0]}.pt"
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    seqs = [generate_sequence(s, num_frames=a.frames, height=a.size, width=a.size) for s in seeds]
    torch.save(seqs, path)
    return seqs


t0 = time.time()
train_seqs = render(list(range(1_000_000, 1_000_000 + a.train_scenes)), "train")
test_seqs = render(list(range(0, a.test_scenes)), "test")
print(f"data {time.time() - t0:.0f}s", flush=True)

cfg = ModelConfig(name="proxy", img_size=a.size, patch_size=a.patch, embed_dim=a.dim, depth=a.depth, num_heads=4,
                  patch_embed="conv", ttt=TTTConfig(head_dim=a.dim), global_block=a.block, camera_trunk_depth=2,
                  camera_num_heads=4, layer_scale_init=a.ls, enable_depth=False, enable_local_points=False,
                  dpt=DPTConfig(features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3), hidden=8))
torch.manual_seed(a.seed)
model = ZipMap(cfg)
init_pose_output(model)
if a.zero_head:
    torch.nn.init.zeros_(model.pose_head.pose_branch.fc2.weight)
grid = a.size // a.patch


class PosPatch(nn.Module):
    def __init__(self, inner, kind):
        super().__init__()
        self.inner = inner
        if kind == "learned":
            self.pos = nn.Parameter(torch.randn(1, grid * grid, a.dim) * 0.02)
        else:
            ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
            freqs = 2 ** torch.linspace(0, math.log2(grid), a.dim // 4) * math.pi / grid
            parts = [f(c[..., None] * freqs) for c in (ys, xs) for f in (torch.sin, torch.cos)]
            self.register_buffer("pos", torch.cat(parts, -1).reshape(1, grid * grid, -1))

    def forward(self, x):
        return self.inner(x) + self.pos


if a.pos != "none":
    model.aggregator.patch_embed = PosPatch(model.aggregator.patch_embed, a.pos)
opt = make_optimizer(model, a.lr, 0.05)
rng = torch.Generator().manual_seed(a.seed)


def forward_for_training(model, images):
    layers, _ = model.aggregator(images)
    encs = model.pose_head(layers[cfg.depth - 1][:, :, 0], cfg.camera_iterations)
    return {"pose_encs": encs, "pose_enc": encs[-1]}


def sample(seqs, n, gen):
    picks = torch.randint(len(seqs), (n,), generator=gen).tolist()
    idx = []
    for _ in picks:
        perm = torch.randperm(a.frames, generator=gen)[: a.seq].tolist()
        idx.append(perm)
    return batch_from_sequences([seqs[i] for i in picks], idx)


def errors(pred, target):
    t = (pred[..., 1:, :3] - target[..., 1:, :3]).abs().mean().item()
    Rp = quaternion_to_matrix(pred[..., 1:, 3:7].double())
    Rt = quaternion_to_matrix(target[..., 1:, 3:7].double())
    rot = rotation_angle_deg(Rt.transpose(-1, -2) @ Rp).mean().item()
    return t, rot


def evaluate():
    gen = torch.Generator().manual_seed(123)
    model.eval()
    tot = [0, 0, 0, 0]
    with torch.no_grad():
        for _ in range(4):
            b = sample(test_seqs, 32, gen)
            tg = make_targets(b.depth, b.valid, b.extrinsics, b.intrinsics, b.world_points)
            pred = forward_for_training(model, b.images)["pose_enc"]
            triv = torch.zeros_like(tg.pose_enc)
            triv[..., 6] = 1
            e, et = errors(pred, tg.pose_enc), errors(triv, tg.pose_enc)
            tot = [x + y / 4 for x, y in zip(tot, (*e, *et))]
    model.train()
    return tot


start = time.time()
win = []
for step in range(a.steps):
    lr = a.lr * lr_factor(step, step / a.steps, a.warmup)
    for g in opt.param_groups:
        g["lr"] = lr
    b = sample(train_seqs, a.batch, rng)
    tg = make_targets(b.depth, b.valid, b.extrinsics, b.intrinsics, b.world_points)
    out = forward_for_training(model, b.images)
    terms = camera_loss(out["pose_encs"], tg.pose_enc)
    loss = terms["camera_T"] + terms["camera_R"] + terms["camera_FoV"]
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    win.append(errors(out["pose_enc"].detach(), tg.pose_enc))
    if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
        tr = [sum(x) / len(win) for x in zip(*win)]
        win = []
        ev = evaluate()
        print(f"step {step + 1} {time.time() - start:.0f}s train T={tr[0]:.4f} R={tr[1]:.2f}deg | held-out "
              f"T={ev[0]:.4f} R={ev[1]:.2f}deg (trivial T={ev[2]:.4f} R={ev[3]:.2f}deg) ratio T={ev[0] / ev[2]:.2f} "
              f"R={ev[1] / ev[3]:.2f}", flush=True)
