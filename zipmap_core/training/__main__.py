"""CLI: python -m zipmap_core.training --config demo_ttt --minutes 4 --out ckpt.safetensors --device cuda"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from zipmap_core.config import ModelConfig
from zipmap_core.training.losses import LossWeights
from zipmap_core.training.trainer import SAVE_DTYPES, TrainConfig, train


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig(steps=1)
    p = argparse.ArgumentParser(
        prog="python -m zipmap_core.training",
        description="Train or fine-tune a ZipMap preset on synthetic sequences rendered on the fly.",
    )
    p.add_argument("--config", default=defaults.preset, choices=ModelConfig.preset_names(), help="model preset")
    p.add_argument("--out", default=defaults.out, help="checkpoint path (.safetensors or .pt; fsspec URLs work)")
    p.add_argument("--device", default="cuda" , help="cuda, cuda:1, cpu, ...")
    p.add_argument("--minutes", type=float, help="wall-clock budget (data rendering included)")
    p.add_argument("--steps", type=int, help="step budget (the run stops at whichever budget ends first)")
    p.add_argument("--init", help="checkpoint to fine-tune from")
    p.add_argument("--paired-config", choices=ModelConfig.preset_names(),
                   help="a second preset trained in lockstep on the same batches (e.g. the attention baseline)")
    p.add_argument("--paired-out", help="checkpoint path of the paired preset")
    p.add_argument("--state-out", help="where to write the resumable training state (weights, optimiser, data)")
    p.add_argument("--resume", help="a training state (--state-out of an earlier run) to continue")
    p.add_argument("--stop-after-minutes", type=float,
                   help="end this run after this long and save the state (the budgets span all runs)")
    p.add_argument("--stop-at-step", type=int, help="likewise, end this run at this step")
    for name in ("lr", "lr_min_ratio", "weight_decay", "grad_clip", "new_per_step", "curriculum"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("warmup_steps", "seed", "log_every", "ckpt_every", "height", "width", "min_frames", "max_frames",
                 "frames_per_batch", "pool_size", "pool_frames"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    p.add_argument("--save-dtype", default=defaults.save_dtype, choices=sorted(SAVE_DTYPES))
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA too")
    p.add_argument("--no-aspect-crops", action="store_true", help="train on full (square) renders only")
    for f in fields(LossWeights):
        if f.type in ("float", float):
            p.add_argument(f"--loss-{f.name.replace('_', '-')}", type=float, default=f.default)
    p.add_argument("--loss-camera-kind", default=LossWeights.camera_kind, choices=["l1", "huber"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes is None and args.steps is None:
        print("error: give --minutes, --steps or both", file=sys.stderr)
        return 2
    loss = LossWeights(**{f.name: getattr(args, f"loss_{f.name}") for f in fields(LossWeights)})
    cfg = TrainConfig(
        preset=args.config, out=args.out, device=args.device, minutes=args.minutes, steps=args.steps, init=args.init,
        lr=args.lr, lr_min_ratio=args.lr_min_ratio, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
        grad_clip=args.grad_clip,
        bf16=not args.no_bf16, seed=args.seed, log_every=args.log_every, ckpt_every=args.ckpt_every,
        save_dtype=args.save_dtype, height=args.height, width=args.width, min_frames=args.min_frames,
        max_frames=args.max_frames, frames_per_batch=args.frames_per_batch, pool_size=args.pool_size,
        pool_frames=args.pool_frames, new_per_step=args.new_per_step, curriculum=args.curriculum,
        aspect_crops=not args.no_aspect_crops, loss=loss, paired_preset=args.paired_config,
        paired_out=args.paired_out, resume=args.resume, state_out=args.state_out,
        stop_after_minutes=args.stop_after_minutes, stop_at_step=args.stop_at_step,
    )
    result = train(cfg, log=lambda line: print(line, flush=True))
    print(f"final loss {result.final_loss:.4f} after {result.steps} steps ({result.seconds:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
