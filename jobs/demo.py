"""The embedded default: synthetic captures in, reconstructions out, scored against ground truth.

    python -m jobs.demo [--out outputs/demo] [--sequences 9] [--frames 8] [--preset demo_ttt]

1. generates held-out synthetic capture sequences (PNG frames + exact ground truth; seeds that
   the bundled models never saw in training) under <out>/data, or reuses the ones an earlier
   demo left there with the same settings;
2. reconstructs them with the pipeline on a local Ray cluster (or the one RAY_ADDRESS names)
   using the small ZipMap bundled with the package (zipmap_core/assets), into <out>/runs/<run id>;
   its cameras come from photometric alignment with the predicted depth (`--cameras network`: from
   the camera head, which these small models have not learnt: zipmap_core/assets/README.md);
3. scores the run against the ground truth next to a trivial baseline (constant depth, identity
   poses), prints both tables and where the outputs are, and writes <out>/metrics.json;
4. measures the cost side of ZipMap vs full attention: time and peak memory of demo_ttt and
   demo_attention reconstructing 8, 64 and 256 frames on this machine (on a CPU at 56x42, a
   quarter of the demo's side, so that it takes seconds; --cost full measures at --width x --height).

Everything runs on the CPU in a few minutes; a GPU is used when present. Exit codes as for
`zipmap-pipeline run`: 0 all sequences done, 1 some failed, 2 bad arguments or missing weights,
3 infrastructure error (Ray, storage, model loading).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
import time
from typing import Any

import fsspec

from zipmap_core.synthetic.dataset import GROUND_TRUTH_FILE, INDEX_FILE, META_FILE

PATCH = 14
HELD_OUT_START = 900_000  # demo seeds: below TRAIN_SEED_START, away from bench/train_demo's 0..N
COST_PRESETS = ("demo_ttt", "demo_attention")
COST_SMALL = (42, 56)  # (height, width): 3 x 4 patches, the demo's 224x168 at a quarter of its side
COST_REPEATS = 3
COST_LONG_RUN_S = 2.0  # a run that takes longer is not repeated
EXIT_USAGE = 2
WRAP = 104  # the width of the report's prose
_CAMERAS = {
    "photometric": "Cameras: each frame aligned photometrically to the previous one with the model's depth and "
    "intrinsics\n(--cameras network shows the camera head's own, no better than identity poses for these models).",
    "network": "Cameras: the camera head's (--cameras photometric aligns frames with the model's depth instead).",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out", default="outputs/demo", help="where the dataset, the runs and metrics.json go (any fsspec URL)"
    )
    ap.add_argument("--sequences", type=int, default=9, help="held-out sequences (9: every scene kind x camera path)")
    ap.add_argument("--frames", type=int, default=8, help="frames per sequence (at least 2)")
    ap.add_argument("--preset", default="demo_ttt", help="a bundled model: demo_ttt or demo_attention")
    ap.add_argument(
        "--height", type=int, default=168, help="a multiple of 14, at most --width (the bundled models saw 168x224)"
    )
    ap.add_argument("--width", type=int, default=224, help="a multiple of 14")
    ap.add_argument("--engine", default="offline", choices=["offline", "chunked", "streaming"])
    ap.add_argument("--window", type=int, default=4, help="frames per TTT window of the streaming engine")
    ap.add_argument(
        "--cameras",
        default="photometric",
        choices=["photometric", "network"],
        help="photometric (default): each frame aligned to the previous one with the predicted depth; network: "
        "the camera head's (EngineConfig.cameras)",
    )
    ap.add_argument("--regenerate", action="store_true", help="render the dataset again even if <out>/data matches")
    ap.add_argument(
        "--cost",
        default="auto",
        choices=["auto", "small", "full", "off"],
        help="time and memory of demo_ttt vs demo_attention: small at 56x42 (seconds), full at --width x --height "
        "(minutes on a CPU), auto (default) small on a CPU and full on a GPU, off to skip",
    )
    ap.add_argument(
        "--cost-frames", type=int, nargs="+", default=[8, 64, 256], help="sequence lengths of the cost measurement"
    )
    ap.add_argument(
        "--no-progress", action="store_true", help="no progress bars (the default when stderr is not a terminal)"
    )
    args = ap.parse_args(argv)
    args.progress = not args.no_progress and sys.stderr.isatty()
    problems = []
    if args.sequences < 1:
        problems.append("--sequences must be at least 1")
    if args.frames < 2:
        problems.append("--frames must be at least 2 (the pipeline's input.min_frames)")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value < PATCH or value % PATCH:
            problems.append(f"--{name} must be a positive multiple of {PATCH}, got {value}")
    if args.window < 1:
        problems.append("--window must be at least 1")
    if min(args.cost_frames) < 1:
        problems.append("--cost-frames must be positive")
    if args.height > args.width:
        # the pipeline's "crop" preprocessing keeps the width and crops the height to at most the
        # width: taller frames would be cropped and no longer line up with their ground truth
        problems.append(f"--height ({args.height}) must not exceed --width ({args.width})")
    if problems:
        ap.error("; ".join(problems))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _quiet_logging()
    from pipeline.cli import guarded

    return guarded(lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    # heavy imports after argument parsing, so --help and argument errors are instant
    from zipmap_core.assets import BUNDLED_SCHEME, demo_checkpoint_path

    try:
        path = demo_checkpoint_path(args.preset)  # missing weights: a clear error now, not in the actor
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    checkpoint = f"{BUNDLED_SCHEME}{args.preset}"  # found wherever the package is installed

    from pipeline import run_job
    from pipeline.spec import JobSpec
    from zipmap_core.evaluation.report import evaluate_dataset, run_predictor, summarize, trivial_predictor

    # local paths made absolute: printed locations work from anywhere, and Ray workers need not share our cwd
    out = args.out.rstrip("/") if "://" in args.out else os.path.abspath(args.out)
    data = f"{out}/data"
    start = time.perf_counter()
    steps = 3 if args.cost == "off" else 4

    step = time.perf_counter()
    print(
        f"[1/{steps}] {args.sequences} held-out synthetic sequences of {args.frames} frames "
        f"({args.width}x{args.height}) in {data}",
        flush=True,
    )
    reused = _prepare_dataset(data, args)
    print(f"      {'reused the dataset already there' if reused else 'rendered'} ({_took(step)})", flush=True)

    step = time.perf_counter()
    where = (
        f"the Ray cluster at {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "a local Ray cluster"
    )
    print(f"[2/{steps}] reconstructing them with {checkpoint} ({path}) on {where}", flush=True)
    spec = JobSpec.model_validate(
        {
            "input": {"prefix": data},
            "output": f"{out}/runs",
            "model": {"preset": args.preset, "checkpoint": checkpoint},
            "engine": {
                "mode": args.engine,
                "dtype": "float32",
                "chunk_size": 4,
                "window": args.window if args.engine == "streaming" else None,
                "cameras": args.cameras,
            },
            "preprocess": {"size": args.width},
            "save_depth": True,  # the depth maps are what the depth metrics score
            "resources": {"num_actors": 1, "max_in_flight_per_actor": 2},
        }
    )
    started_ray = _start_local_ray()
    try:
        summary = run_job(spec, progress=args.progress, raise_on_failure=False)  # the table shows failures
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print(
        f"      {summary.done}/{summary.sequences} sequences, {summary.frames} frames, "
        f"{summary.points} points in {summary.run_uri} ({_took(step)})",
        flush=True,
    )
    for failure in summary.failures:
        print(
            f"      failed: {failure['sequence_id']} after {failure['attempts']} attempt(s): {failure['error']}",
            file=sys.stderr,
        )
    if summary.done == 0:
        print("error: no sequence was reconstructed", file=sys.stderr)
        return summary.exit_code

    step = time.perf_counter()
    print(f"[3/{steps}] scoring against the ground truth", flush=True)
    ours = evaluate_dataset(run_predictor(summary.run_uri), data, progress=False)
    trivial = evaluate_dataset(trivial_predictor(), data, progress=False)
    metrics = {
        "run_uri": summary.run_uri,
        "preset": args.preset,
        "checkpoint": checkpoint,
        "engine": args.engine,
        "cameras": args.cameras,
        "dataset": data,
        "methods": {
            args.preset: {"mean": summarize(ours), "sequences": ours},
            "trivial": {"mean": summarize(trivial), "sequences": trivial},
        },
    }
    print(f"      done ({_took(step)})", flush=True)

    cost = None
    if args.cost != "off":
        cost = metrics["cost"] = _measure_cost(args)
    metrics_uri = f"{out}/metrics.json"
    with fsspec.open(metrics_uri, "w") as f:
        json.dump(_finite_or_none(metrics), f, indent=1)
    print()

    means = {name: method["mean"] for name, method in metrics["methods"].items()}
    print(_report(args, summary, ours, trivial, means, cost, data, metrics_uri, time.perf_counter() - start))
    return summary.exit_code


# --- steps ------------------------------------------------------------------------------------


def _prepare_dataset(data: str, args: argparse.Namespace) -> bool:
    """Render the held-out dataset into `data` unless the one there has exactly these settings.

    Returns True when an existing dataset was reused. A folder that holds anything else than a
    dataset of this demo is never touched.
    """
    from zipmap_core.synthetic.dataset import INDEX_FILE, generate_dataset, list_sequences
    from zipmap_core.training.data import held_out_seeds

    seeds = held_out_seeds(args.sequences, start=HELD_OUT_START)
    fs, root = fsspec.core.url_to_fs(data)
    index_path = f"{root.rstrip('/')}/{INDEX_FILE}"
    if fs.exists(root) and fs.ls(root):
        if not fs.isfile(index_path):
            raise _spec_error(f"{data} exists and is not a synthetic dataset (no {INDEX_FILE}); choose another --out")
        index = json.loads(fs.cat_file(index_path))
        same = (
            [e.get("seed") for e in index.get("sequences", [])] == seeds
            and (index.get("num_frames"), index.get("height"), index.get("width"))
            == (args.frames, args.height, args.width)
            and len(list_sequences(data)) == args.sequences
        )
        if same and not args.regenerate:
            return True
        fs.rm(root, recursive=True)  # an earlier demo's dataset with other settings
    generate_dataset(
        data, args.sequences, None, args.frames, args.height, args.width, seeds=seeds, progress=args.progress
    )
    return False


def _measure_cost(args: argparse.Namespace) -> dict:
    """Step 4: time and peak memory of both bundled architectures per sequence length.

    On one CPU thread: two threads of one process slow down many times over while anything else
    runs on a 2-core machine. On a CPU at COST_SMALL unless --cost full: attention over 256 frames
    of the demo's size takes minutes there."""
    import torch

    from zipmap_core.config import ModelConfig
    from zipmap_core.evaluation.cost import describe_device, format_costs, measure_costs

    step = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    full = args.cost == "full" or (args.cost == "auto" and device == "cuda")
    height, width = (args.height, args.width) if full else COST_SMALL
    threads = 1 if device == "cpu" else None
    where = describe_device(device, threads)
    print(
        f"[4/4] time and memory of {' and '.join(COST_PRESETS)} reconstructing "
        f"{', '.join(map(str, args.cost_frames))} frames of {width}x{height} on {where}",
        flush=True,
    )
    costs = measure_costs(
        [ModelConfig.preset(p) for p in COST_PRESETS], args.cost_frames, height, width, device=device,
        repeats=COST_REPEATS, long_run_s=COST_LONG_RUN_S, threads=threads,
    )
    print(f"      done ({_took(step)})", flush=True)
    return {
        "device": where,
        "engine": "offline engine, float32, random weights",
        "repeats": COST_REPEATS,
        "long_run_s": COST_LONG_RUN_S,
        "runs": [c.as_dict() for c in costs],
        "table": format_costs(costs),
    }


def _start_local_ray() -> bool:
    """Start a quiet local Ray (no dashboard) unless a cluster is named or already connected;
    returns True when this call started it. The pipeline would start one itself, with defaults."""
    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return False
    from pipeline.errors import InfrastructureError

    try:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    except Exception as exc:
        raise InfrastructureError(f"cannot start a local Ray cluster: {exc}") from exc
    return True


# --- output -----------------------------------------------------------------------------------


def _report(
    args, summary, ours: list[dict], trivial: list[dict], means: dict[str, dict], cost: dict | None, data: str,
    metrics_uri: str, seconds: float,
) -> str:
    from zipmap_core.evaluation.report import format_table

    run = summary.run_uri
    lines = [
        (
            f"{args.preset} on {len(ours)} held-out sequences ({summary.done} reconstructed, "
            f"{summary.frames_per_s:.1f} frames/s over the whole run):"
        ),
        format_table(ours, means[args.preset]),
        "",
        "trivial baseline (constant depth at the ground-truth median, identity poses):",
        format_table(trivial, means["trivial"]),
        "",
        "Lower is better except d<1.25. AbsRel, d<1.25: depth after per-frame median scaling; ATE: camera",
        "centres after Sim(3) alignment; RPE-t, RPE-r: frame-to-frame motion errors; Acc, Comp: point-cloud",
        "distances after Sim(3) alignment. Lengths are in ground-truth scene units.",
        _CAMERAS[args.cameras],
        "",
        *(_cost_report(args, cost) if cost else []),
        f"outputs of run {summary.run_id}:",
        f"  frames table : {run}/frames (Parquet, hive-partitioned by sequence_id)",
        f"  depth maps   : {run}/depth",
        f"  point clouds : {run}/points/<sequence>.ply",
        f"  report       : {run}/report.html (previews and GLB scenes in {run}/previews/<sequence>/)",
        f"  manifest     : {run}/manifest.parquet, {run}/summary.json",
        f"  metrics      : {metrics_uri}",
        f"  input data   : {data} (PNG frames, ground_truth.npz per sequence)",
        f"  read them    : python -c \"from pipeline import read_outputs; print(read_outputs('{run}').frames)\"",
        f"demo finished in {seconds:.0f} s",
    ]
    return "\n".join(lines)


def _cost_report(args: argparse.Namespace, cost: dict) -> list[str]:
    height, width = cost["runs"][0]["height"], cost["runs"][0]["width"]
    if (height, width) == (args.height, args.width):
        size = f"{width}x{height}, the demo's frame size"
    else:
        size = (
            f"{width}x{height} ({width // PATCH}x{height // PATCH} patches; --cost full measures at the demo's "
            f"{args.width}x{args.height}, minutes on a CPU)"
        )
    single = (
        f", 1 run where a run took over {cost['long_run_s']:g} s"
        if any(r["runs"] < cost["repeats"] for r in cost["runs"])
        else ""
    )
    header = (
        f"the cost side, measured now on {cost['device']}: {' vs '.join(COST_PRESETS)} reconstructing sequences "
        f"of {size}; {cost['engine']}; time: median of {cost['repeats']} runs after a warm-up{single}; memory: "
        "the peak a run allocates, weights and input frames not counted:"
    )
    return [
        *textwrap.wrap(header, WRAP),
        cost["table"],
        *textwrap.wrap(
            "TTT's global layers do work linear in the number of frames, full attention's quadratic (every token "
            "attends to the tokens of every frame); patch embedding, frame blocks and heads are linear in both. So "
            "attention's time grows faster than the frame count, TTT's about as fast. Peak memory grows no faster "
            "than the frame count in either: PyTorch's fused attention kernels never hold the whole attention matrix.",
            WRAP,
        ),
        "",
    ]


def _took(start: float) -> str:
    return f"{time.perf_counter() - start:.0f} s"


def _finite_or_none(value: Any) -> Any:
    """NaN/inf as null, so metrics.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _spec_error(message: str) -> Exception:
    from pipeline.errors import SpecError

    return SpecError(message)


def _quiet_logging() -> None:
    """The pipeline's warnings and errors (retries, failures) on stderr, without Ray's start-up chatter."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="      %(levelname)s %(name)s: %(message)s")
    # local clusters have token authentication on by default; saying so on every start is noise
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("pipeline.discovery").addFilter(_hide_own_ground_truth)


_GROUND_TRUTH_FILES = (GROUND_TRUTH_FILE, META_FILE, INDEX_FILE)


def _hide_own_ground_truth(record: logging.LogRecord) -> bool:
    """The demo's sequence folders carry their ground truth beside the frames (what step 3 scores
    against); the pipeline rightly skips those files, but listing them on every run is noise."""
    message = record.getMessage()
    if message.startswith("skipped input "):
        return not message.split(":", 1)[0].endswith(_GROUND_TRUTH_FILES)
    if message.startswith("skipped ") and " input(s) under " in message:
        counts = message.rsplit(": ", 1)[-1]
        return "," in counts or not counts.endswith(" not_media")  # shown unless all are such files
    return True


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
