"""Sharpest proxy for issue #19: two crops of one rendered frame, shifted by (dx, dy) pixels; the
network must report the shift (as frame 1's translation). A pure matching task: if a demo-like
aggregator cannot learn it on held-out images, it cannot learn camera motion either.

    python bench/exp/shift_proxy.py --block attention --pos core   # 300 steps: ~3 min on one core

Prints the held-out L1 against predicting no shift (ratio 1.00: nothing learnt); the results of
2026-11-30 are in bench/exp/README.md."""
import argparse
import math
import time

import torch
from torch import nn

from zipmap_core.config import DPTConfig, ModelConfig, TTTConfig
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.synthetic import generate_sequence
from zipmap_core.training.data import TRAIN_SEED_START
from zipmap_core.training.trainer import init_pose_output, lr_factor, make_optimizer

p = argparse.ArgumentParser()
p.add_argument("--crop", type=int, default=28)
p.add_argument("--patch", type=int, default=4)
p.add_argument("--dim", type=int, default=64)
p.add_argument("--depth", type=int, default=2)
p.add_argument("--block", default="ttt")
p.add_argument("--max-shift", type=int, default=6)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--steps", type=int, default=300)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--ls", type=float, default=0.01)
p.add_argument("--pos", default="none")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--target", default="relative", help="relative: frame 1 minus frame 0 shift; absolute: frame 1's own")
a = p.parse_args()
torch.set_num_threads(1)


def frames(seeds: range) -> torch.Tensor:
    """8 rendered 56x56 frames of each seed's sequence (about 0.05 s a sequence) -> [N, 3, 56, 56]."""
    seqs = [generate_sequence(s, num_frames=8, height=56, width=56) for s in seeds]
    return torch.cat([s.images for s in seqs]).permute(0, 3, 1, 2).float() / 255


train_imgs = frames(range(TRAIN_SEED_START, TRAIN_SEED_START + 600))
test_imgs = frames(range(64))  # held out: never trained on
cfg = ModelConfig(name="shift", img_size=a.crop, patch_size=a.patch, embed_dim=a.dim, depth=a.depth, num_heads=4,
                  patch_embed="conv", ttt=TTTConfig(head_dim=a.dim), global_block=a.block, camera_trunk_depth=1,
                  camera_num_heads=4, layer_scale_init=a.ls, enable_depth=False, enable_local_points=False,
                  dpt=DPTConfig(features=16, out_channels=(8, 16, 32, 32), layers=(0, 0, 1, 1), hidden=8))
torch.manual_seed(a.seed)
model = ZipMap(cfg)
init_pose_output(model)
nn.init.zeros_(model.pose_head.pose_branch.fc2.weight)
grid = a.crop // a.patch
if a.pos == "sincos":  # the proxy's own code: frequencies pi/grid .. pi per patch
    ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    freqs = 2 ** torch.linspace(0, math.log2(grid), a.dim // 4) * math.pi / grid
    pos = torch.cat([f(c[..., None] * freqs) for c in (ys, xs) for f in (torch.sin, torch.cos)], -1)
    pos = pos.reshape(1, grid * grid, -1)
if a.pos == "core":  # the model's own code (ModelConfig.patch_positions)
    cfg = cfg.model_copy(update={"patch_positions": True})
    torch.manual_seed(a.seed)
    model = ZipMap(cfg)
    init_pose_output(model)
    nn.init.zeros_(model.pose_head.pose_branch.fc2.weight)
if a.pos == "sincos":
    inner = model.aggregator.patch_embed
    model.aggregator.patch_embed = type("P", (nn.Module,), {"forward": lambda self, x: self.inner(x) + pos})()
    model.aggregator.patch_embed.inner = inner
opt = make_optimizer(model, a.lr, 0.05)


def sample(imgs, n, gen):
    idx = torch.randint(len(imgs), (n,), generator=gen)
    m = a.max_shift
    c0 = (56 - a.crop) // 2
    off = torch.randint(-m, m + 1, (n, 2, 2), generator=gen)  # [n, frame, (y, x)]
    frames = torch.stack([
        torch.stack([imgs[i, :, c0 + y:c0 + y + a.crop, c0 + x:c0 + x + a.crop] for y, x in o.tolist()])
        for i, o in zip(idx.tolist(), off)
    ])
    target = (off[:, 1] - (off[:, 0] if a.target == "relative" else 0)).float() / m  # [n, 2]
    return frames, target


def predict(frames):
    layers, _ = model.aggregator(frames)
    return [e[:, 1, :2] for e in model.pose_head(layers[cfg.depth - 1][:, :, 0], cfg.camera_iterations)]


gen, egen = torch.Generator().manual_seed(a.seed), torch.Generator().manual_seed(99)
eval_batch = sample(test_imgs, 256, egen)
start, win = time.time(), []
for step in range(a.steps):
    for g in opt.param_groups:
        g["lr"] = a.lr * lr_factor(step, step / a.steps, 30)
    frames, target = sample(train_imgs, a.batch, gen)
    preds = predict(frames)
    loss = sum(0.6 ** (len(preds) - 1 - i) * (q - target).abs().mean() for i, q in enumerate(preds))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    win.append((preds[-1].detach() - target).abs().mean().item())
    if (step + 1) % 50 == 0:
        with torch.no_grad():
            model.eval()
            err = (predict(eval_batch[0])[-1] - eval_batch[1]).abs().mean().item()
            model.train()
        triv = eval_batch[1].abs().mean().item()
        print(f"step {step + 1} {time.time() - start:.0f}s train L1 {sum(win) / len(win):.3f} held-out L1 {err:.3f}"
              f" (trivial {triv:.3f}, ratio {err / triv:.2f})", flush=True)
        win = []
