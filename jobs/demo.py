"""The embedded default: synthetic captures in, reconstructions out, scored against ground truth.

    python -m jobs.demo [--out outputs/demo] [--sequences 6] [--frames 8]

Generates held-out synthetic capture sequences (images + exact ground truth), reconstructs them
with the pipeline on a local Ray cluster using the small ZipMap bundled with the package, then
prints where the outputs are and how good they are next to a trivial baseline (constant depth,
identity poses). Everything runs on the CPU in a few minutes; a GPU is used when present.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import run_job
from pipeline.spec import JobSpec
from zipmap_core.assets import demo_checkpoint_path
from zipmap_core.evaluation.report import evaluate_dataset, format_table, run_predictor, summarize, trivial_predictor
from zipmap_core.synthetic.dataset import generate_dataset

HELD_OUT_SEED = 900_000  # far from the seeds the bundled model was trained on


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="where the dataset and the runs go (any fsspec URL)")
    ap.add_argument("--sequences", type=int, default=6)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--preset", default="demo_ttt", help="a bundled model: demo_ttt or demo_attention")
    ap.add_argument("--height", type=int, default=168, help="a multiple of 14 (the bundled models saw 168x224)")
    ap.add_argument("--width", type=int, default=224, help="a multiple of 14")
    ap.add_argument("--engine", default="offline", choices=["offline", "chunked", "streaming"])
    args = ap.parse_args(argv)

    height, width = args.height, args.width
    out = args.out.rstrip("/")
    data = f"{out}/data"
    print(f"1/3 generating {args.sequences} synthetic sequences of {args.frames} frames ({width}x{height}) in {data}")
    generate_dataset(data, args.sequences, HELD_OUT_SEED, args.frames, height, width)

    print(f"2/3 reconstructing them with the bundled {args.preset} model on a local Ray cluster")
    spec = JobSpec.model_validate(
        {
            "input": {"prefix": data},
            "output": f"{out}/runs",
            "model": {"preset": args.preset, "checkpoint": demo_checkpoint_path(args.preset)},
            "engine": {"mode": args.engine, "dtype": "float32", "chunk_size": 4},
            "preprocess": {"size": width},
            "save_depth": True,
            "resources": {"num_actors": 1, "max_in_flight_per_actor": 2},
        }
    )
    summary = run_job(spec, progress=True)
    if summary.done == 0:
        print(f"no sequence was reconstructed: {summary.failures}", file=sys.stderr)
        return 1

    print("3/3 scoring against ground truth")
    ours = evaluate_dataset(run_predictor(summary.run_uri), data, progress=False)
    trivial = evaluate_dataset(trivial_predictor(), data, progress=False)
    print(f"\n{args.preset} ({summary.done}/{summary.sequences} sequences, {summary.frames_per_s:.1f} frames/s):")
    print(format_table(ours, summarize(ours)))
    print("\ntrivial baseline (constant depth, identity poses):")
    print(format_table(trivial, summarize(trivial)))
    print(
        f"\noutputs: {summary.run_uri}\n"
        f"  frames table : {summary.run_uri}/frames (pyarrow.dataset, hive partitioning)\n"
        f"  point clouds : {summary.run_uri}/points/<sequence>.ply\n"
        f"  manifest     : {summary.run_uri}/manifest.parquet, summary.json\n"
        f"  read them    : python -c \"from pipeline import read_outputs; print(read_outputs('{summary.run_uri}').frames)\""
    )
    return summary.exit_code


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    sys.exit(main())
