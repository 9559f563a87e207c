"""Training curves of bench/train_demo.py runs: loss terms against steps for each model.

    python bench/plot_training.py results.json [more results.json of resumed runs] --out curve.png

Needs matplotlib (not a project dependency: `pip install matplotlib`; the GPU machine has it).
Each results.json holds the history of the models it trained; the histories of runs that resumed
one another are drawn as one curve, and so are those of runs that fine-tuned the previous run's
files (--init-dir; their steps count from 0 again, so they are drawn after the previous run's last
step, the start of each such run marked by a dotted line).
"""

from __future__ import annotations

import argparse
import json
import sys

TERMS = ("loss", "camera_T", "camera_R", "depth_log", "cross_frame_camera")  # the last: runs since 2026-11-30


def histories(paths: list[str]) -> tuple[dict[str, list[dict]], list[int]]:
    """Each model's history over all runs in order, and the steps where fine-tuning runs began."""
    merged: dict[str, dict[int, dict]] = {}
    starts: set[int] = set()
    for path in paths:
        with open(path) as f:
            results = json.load(f)
        fine_tune = bool((results.get("args") or {}).get("init_dir"))
        for name, run in (results.get("runs") or {}).items():
            offset = max(merged.get(name, {0: None})) if fine_tune else 0
            if fine_tune:
                starts.add(offset)
            for entry in run["history"]:
                merged.setdefault(name, {})[entry["step"] + offset] = {**entry, "step": entry["step"] + offset}
    return {name: [by_step[s] for s in sorted(by_step)] for name, by_step in merged.items()}, sorted(starts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="demo models: training loss (synthetic training sequences)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves, starts = histories(args.results)
    fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3.4))
    for ax, term in zip(axes, TERMS):
        for name, entries in curves.items():
            points = [(e["step"], e[term]) for e in entries if term in e]
            ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
        for step in starts:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
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
