"""python -m zipmap_core.evaluation --pred RUN_OUTPUT --gt DATASET

Prints a per-sequence table of depth, camera and point-cloud metrics and their means.
`--pred trivial` evaluates the constant-depth / identity-pose baseline instead.
"""

from __future__ import annotations

import argparse
import json
import math

import fsspec

from .report import evaluate_dataset, format_table, run_predictor, summarize, trivial_predictor


def _json_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m zipmap_core.evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, help="a pipeline run folder, a folder of <seq>.npz, or 'trivial'")
    parser.add_argument("--gt", required=True, help="a dataset written by python -m zipmap_core.synthetic")
    parser.add_argument("--depth-alignment", choices=("frame", "sequence", "none"), default="frame")
    parser.add_argument("--max-points", type=int, default=10_000, help="point-cloud subsample per sequence")
    parser.add_argument("--plots", default=None, help="folder for top-down trajectory plots")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    predictor = trivial_predictor() if args.pred == "trivial" else run_predictor(args.pred)
    rows = evaluate_dataset(predictor, args.gt, depth_alignment=args.depth_alignment,
                            max_points=args.max_points, plots_dir=args.plots)
    means = summarize(rows)
    print(format_table(rows, means))
    result = {
        "pred": args.pred,
        "gt": args.gt,
        "depth_alignment": args.depth_alignment,
        "sequences": [{k: _json_safe(v) for k, v in row.items()} for row in rows],
        "mean": {k: _json_safe(v) for k, v in means.items()},
    }
    if args.json:
        with fsspec.open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
