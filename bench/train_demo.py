"""Train the demo presets (TTT and its attention baseline) and compare them on held-out sequences.

    python bench/train_demo.py --minutes 3.5 --device cuda --out-dir outputs/demo

demo_ttt and demo_attention train in lockstep, each step on one batch rendered for both, so the
comparison is at equal data and steps; the budget covers both (each model's own step time is
reported). Long trainings split over runs with --stop-after-minutes / --state-out / --resume. Both
checkpoints are then loaded back from disk (as shipped, in float16) and run through the offline
engine on held-out synthetic sequences (seeds below TRAIN_SEED_START, never trained on), next to
the trivial baseline (constant depth, identity poses). Prints a table and writes results.json.

With --models, this process trains only the presets named (the others train in another process,
e.g. one per GPU: same seed and data settings give every process the same batches, and a --steps
budget the same steps). --eval-demo also scores the demo's own held-out sequences (jobs.demo:
9 sequences x 8 frames at 224x168, every scene kind x camera path). Each model is scored with the
cameras the demo uses (photometric alignment with its depth, EngineConfig.cameras) and, in a row
of its own, with its camera head's ("<model> network cameras"), from the same forward pass.

CPU smoke run (a minute): python bench/train_demo.py --device cpu --steps 20 --size 112 \
    --frames-per-batch 8 --pool-size 4 --eval-sequences 2 --eval-frames 4
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs import demo as demo_job  # noqa: E402
from zipmap_core import EngineConfig, ModelConfig, ZipMap, load_checkpoint, reconstruct  # noqa: E402
from zipmap_core.config import PRESETS  # noqa: E402
from zipmap_core.engines import with_photometric_cameras  # noqa: E402
from zipmap_core.evaluation import evaluate_sequence, trivial_prediction  # noqa: E402
from zipmap_core.evaluation.metrics import nanmean  # noqa: E402
from zipmap_core.synthetic import generate_sequence  # noqa: E402
from zipmap_core.synthetic.scenes import SCENES  # noqa: E402
from zipmap_core.synthetic.trajectories import TRAJECTORIES  # noqa: E402
from zipmap_core.training import LossWeights, TrainConfig, held_out_seeds, train  # noqa: E402

COLUMNS = (
    ("depth_abs_rel", "AbsRel"),
    ("depth_delta_1_25", "d<1.25"),
    ("ate", "ATE"),
    ("rpe_trans", "RPE-t"),
    ("rpe_rot_deg", "RPE-r deg"),
    ("pc_chamfer", "Chamfer"),
)


MODELS = ("demo_ttt", "demo_attention")


def log(line: str) -> None:
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out-dir", default=os.environ.get("OUT", "outputs/demo"))
    p.add_argument("--minutes", type=float, help="training budget of both models together (over all runs)")
    p.add_argument("--steps", type=int, help="step budget (both models train the same steps)")
    p.add_argument("--state-out", help="write the resumable training state of both models here")
    p.add_argument("--resume", help="continue the training state of an earlier run")
    p.add_argument("--init-dir", help="fine-tune each <preset>.safetensors of this folder (fresh optimiser)")
    p.add_argument("--stop-after-minutes", type=float, help="end this run early (resume later); budgets span runs")
    p.add_argument("--stop-at-step", type=int,
                   help="end this run at this step (e.g. to match a twin that a time guard stopped there)")
    p.add_argument("--size", type=int, help="square training/evaluation image size (default: the preset's)")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--warmup-steps", type=int, default=150)
    p.add_argument("--lr-min-ratio", type=float, default=0.0,
                   help="the cosine decays to lr x this (1: constant after the warm-up)")
    p.add_argument("--frames-per-batch", type=int, default=64)
    p.add_argument("--max-frames", type=int, default=12)
    p.add_argument("--pool-size", type=int, default=128)
    p.add_argument("--pool-frames", type=int, default=16)
    p.add_argument("--new-per-step", type=float, default=0.5)
    p.add_argument("--camera-weight", type=float, default=LossWeights.camera, help="weight of the camera loss")
    p.add_argument("--curriculum", type=float, default=0.0,
                   help="fraction of training over which sequence length and frame spacing ramp up")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-sequences", type=int, default=16)
    p.add_argument("--eval-frames", type=int, default=12)
    p.add_argument("--eval-demo", action="store_true", help="also evaluate on the demo's 9 held-out sequences")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="the presets this process trains (in lockstep when both)")
    p.add_argument("--skip-training", action="store_true", help="evaluate the checkpoints already in --out-dir")
    p.add_argument("--preset-update", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="change both demo presets in this process (e.g. patch_positions=true), to train and "
                        "evaluate a variant before the presets in zipmap_core/config.py change with new files")
    args = p.parse_args(argv)
    if args.minutes is None and args.steps is None and not args.skip_training:
        p.error("give --minutes and/or --steps")
    return args


def update_presets(updates: list[str]) -> dict[str, str]:
    """Apply --preset-update to both demo presets of this process (validated like any config)."""
    fields = dict(item.split("=", 1) for item in updates)
    for name in MODELS:
        PRESETS[name] = ModelConfig.model_validate({**PRESETS[name].model_dump(), **fields})
    return fields


def train_both(args: argparse.Namespace, paths: dict[str, str]) -> dict[str, dict]:
    """demo_ttt and demo_attention in lockstep: every step renders one batch and trains both on it
    (or only those of --models: the same seed and settings in another process give it the same batches)."""
    main, *paired = args.models
    cfg = TrainConfig(
        preset=main, out=paths[main], device=args.device, minutes=args.minutes, steps=args.steps,
        lr=args.lr, warmup_steps=args.warmup_steps, lr_min_ratio=args.lr_min_ratio, seed=args.seed,
        log_every=args.log_every, ckpt_every=500,
        height=args.size, width=args.size, max_frames=args.max_frames, frames_per_batch=args.frames_per_batch,
        pool_size=args.pool_size, pool_frames=args.pool_frames, new_per_step=args.new_per_step,
        curriculum=args.curriculum, paired_preset=paired[0] if paired else None,
        paired_out=paths[paired[0]] if paired else None,
        resume=args.resume, state_out=args.state_out, loss=LossWeights(camera=args.camera_weight),
        stop_after_minutes=args.stop_after_minutes, stop_at_step=args.stop_at_step,
        init=os.path.join(args.init_dir, f"{main}.safetensors") if args.init_dir else None,
        paired_init=os.path.join(args.init_dir, f"{paired[0]}.safetensors") if args.init_dir and paired else None,
    )
    first = train(cfg, log=log)
    runs = {}
    for name, result in zip(args.models, (first, first.paired)):
        runs[name] = {"steps": result.steps, "seconds": result.seconds, "final_loss": result.final_loss,
                      "rendered": result.sequences_rendered, "history": result.history}
    free_memory()
    return runs


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def predict(model: ZipMap, images: torch.Tensor, device: str) -> tuple[dict[str, dict], float]:
    """Offline engine over one sequence -> prediction arrays (as evaluate_sequence takes) with the
    network's and with photometric cameras, and the seconds of the forward pass."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    frames = list(reconstruct(model, images, EngineConfig(mode="offline", cameras="network"), device=device))
    seconds = time.perf_counter() - start
    return {"network": _arrays(frames), "photometric": _arrays(list(with_photometric_cameras(frames, device)))}, seconds


def _arrays(frames: list) -> dict:
    return {
        "extrinsics": torch.stack([torch.from_numpy(f.extrinsic) for f in frames]),
        "intrinsics": torch.stack([torch.from_numpy(f.intrinsic) for f in frames]),
        "depth": torch.stack([torch.from_numpy(f.depth) for f in frames]),
    }


def held_out_set(args: argparse.Namespace, demo: bool = False) -> list[dict]:
    """generate_sequence arguments of the bench's held-out set (seeds 0..N, square) or the demo's."""
    if demo:  # as jobs.demo makes them with its defaults (generate_dataset: every scene kind x path)
        d = demo_job.parse_args([])
        return [{"seed": seed, "num_frames": d.frames, "height": d.height, "width": d.width,
                 "scene": SCENES[i % len(SCENES)], "trajectory": TRAJECTORIES[(i // len(SCENES)) % len(TRAJECTORIES)]}
                for i, seed in enumerate(held_out_seeds(d.sequences, start=demo_job.HELD_OUT_START))]
    size = args.size or ModelConfig.preset("demo_ttt").img_size
    return [{"seed": seed, "num_frames": args.eval_frames, "height": size, "width": size}
            for seed in held_out_seeds(args.eval_sequences)]


def evaluate_all(args: argparse.Namespace, paths: dict[str, str], demo: bool = False) -> dict[str, dict]:
    models = {}
    for name, path in paths.items():
        model = load_checkpoint(ZipMap(ModelConfig.preset(name)), path).to(args.device).eval()
        models[name] = model
    per_method: dict[str, list[dict]] = {
        row: [] for name in models for row in (name, f"{name} network cameras")
    } | {"trivial": []}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for spec in held_out_set(args, demo):
        seed = spec.pop("seed")
        seq = generate_sequence(seed, device=args.device, **spec)
        images = seq.images.permute(0, 3, 1, 2).float() / 255.0
        for name, model in models.items():
            preds, took = predict(model, images, args.device)
            seconds[name].append(took)
            per_method[name].append(evaluate_sequence(preds["photometric"], seq))
            per_method[f"{name} network cameras"].append(evaluate_sequence(preds["network"], seq))
        per_method["trivial"].append(evaluate_sequence(trivial_prediction(seq), seq))
        row = " ".join(
            f"{n}: absrel={m[-1]['depth_abs_rel']:.3f} ate={m[-1]['ate']:.3f}" for n, m in per_method.items()
        )
        log(f"seed {seed} ({seq.scene}/{seq.trajectory}) {row}")
    summary = {}
    for name, metrics in per_method.items():
        summary[name] = {key: nanmean([m[key] for m in metrics]) for key in metrics[0]}
        if name in seconds:
            timed = seconds[name][1:] or seconds[name]  # the first call includes warm-up
            summary[name]["seconds_per_sequence"] = sum(timed) / len(timed)
    return {"summary": summary, "per_sequence": per_method}


def table(summary: dict[str, dict], runs: dict[str, dict] | None, args: argparse.Namespace, demo: bool = False) -> str:
    head = ["method", *(label for _, label in COLUMNS), "steps", "train s"]
    rows = [head]
    for name, metrics in summary.items():
        run = (runs or {}).get(name, {})
        rows.append([name, *(f"{metrics[key]:.4f}" if math.isfinite(metrics[key]) else "nan" for key, _ in COLUMNS),
                     str(run.get("steps", "-")), f"{run['seconds']:.0f}" if run else "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    d = demo_job.parse_args([])
    held = (f"the demo's {d.sequences} held-out sequences x {d.frames} frames ({d.width}x{d.height})" if demo
            else f"{args.eval_sequences} held-out sequences x {args.eval_frames} frames")
    note = f"{held}; depth median-aligned per frame, cameras Sim(3)-aligned (ATE/RPE-t in GT scene units)"
    return "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    paths = {name: os.path.join(args.out_dir, f"{name}.safetensors") for name in ("demo_ttt", "demo_attention")}
    if args.preset_update:
        log(f"presets changed in this run: {update_presets(args.preset_update)}")
    if args.device.startswith("cuda:"):  # one GPU per process: its default device too (names, syncs)
        torch.cuda.set_device(args.device)
    log(f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    runs = None if args.skip_training else train_both(args, paths)
    results = {"runs": runs, "args": vars(args)}
    write_results(args.out_dir, results)  # the training history survives an evaluation cut short
    if args.eval_sequences > 0:
        results.update(evaluate_all(args, paths))
        write_results(args.out_dir, results)
        log(table(results["summary"], runs, args))
    if args.eval_demo:
        results["demo_set"] = evaluate_all(args, paths, demo=True)
        write_results(args.out_dir, results)
        log(table(results["demo_set"]["summary"], runs, args, demo=True))
    return 0


def write_results(out_dir: str, results: dict) -> None:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
