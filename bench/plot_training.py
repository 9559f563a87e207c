"""Training curves of bench/train_demo.py runs: loss terms against steps for each model.

    python bench/plot_training.py results.json [more results.json of resumed runs] --out curve.png

Needs matplotlib (not a project dependency: `pip install matplotlib`; the GPU machine has it).
Each results.json holds the history of the models it trained; the histories of runs that resumed
one another are drawn as one curve.
"""

from __future__ import annotations

import argparse
import json
import sys

TERMS = ("loss", "camera_T", "camera_R", "depth_log", "cross_frame_camera")  # the last: runs since 2026-11-30


def histories(paths: list[str]) -> dict[str, list[dict]]:
    merged: dict[str, dict[int, dict]] = {}
    for path in paths:
        with open(path) as f:
            runs = json.load(f).get("runs") or {}
        for name, run in runs.items():
            for entry in run["history"]:
                merged.setdefault(name, {})[entry["step"]] = entry
    return {name: [by_step[s] for s in sorted(by_step)] for name, by_step in merged.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="demo models: training loss (synthetic training sequences)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = histories(args.results)
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.4))
    for ax, term in zip(axes, TERMS):
        for name, entries in curves.items():
            points = [(e["step"], e[term]) for e in entries if term in e]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
