"""Time and peak memory of TTT vs full attention per sequence length, at any size, on any device.

    python bench/cost.py --height 168 --width 224 --frames 8 64 256 1024 --device cuda --json cost.json

The measurement of the demo's cost table (`python -m jobs.demo`, step 4; zipmap_core/evaluation/cost.py):
the offline engine in float32 over random frames with randomly initialised models of each preset
(default: the bundled demo_ttt and demo_attention architectures), time as the median of --repeats
runs after a warm-up, memory as the peak a run allocates. Prints the table and how each model
grew between the two longest sequences.
"""

from __future__ import annotations

import argparse
import json

import torch

from zipmap_core.config import ModelConfig
from zipmap_core.evaluation.cost import describe_device, format_costs, measure_costs


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["demo_ttt", "demo_attention"])
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--height", type=int, default=168)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: as set)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-run-s", type=float, default=30.0, help="a run that takes longer is not repeated")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)

    costs = measure_costs(
        [ModelConfig.preset(p) for p in args.presets], args.frames, args.height, args.width, device=args.device,
        repeats=args.repeats, long_run_s=args.long_run_s, threads=args.threads,
    )
    print(f"{' vs '.join(args.presets)} at {args.width}x{args.height} on {describe_device(args.device, args.threads)}")
    print(format_costs(costs))
    rows = [c.as_dict() for c in costs]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": describe_device(args.device, args.threads), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
