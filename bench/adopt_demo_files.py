"""Put GPU-trained demo files into zipmap_core/assets with their whole training history.

    python bench/adopt_demo_files.py FINAL_DIR RESULTS_JSON [RESULTS_JSON ...] --out-dir zipmap_core/assets

FINAL_DIR holds the last run's demo_ttt.safetensors and demo_attention.safetensors; the
results.json files are every run that led to them, oldest first (bench/train_demo.py writes one per
run; a run that trained only one model, e.g. one per GPU, has one file per model). The weights are
copied unchanged; the metadata gains what loading and reading them needs: `model_config` (the
preset as zipmap_core/config.py now defines it, checked against each run's --preset-update, so that
a file never runs under settings it was not trained with), `steps` and `seconds` over all runs, and
`runs` (each run's steps, seconds and settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import safetensors
import safetensors.torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zipmap_core.config import ModelConfig  # noqa: E402

MODELS = ("demo_ttt", "demo_attention")
RUN_SETTINGS = ("lr", "lr_min_ratio", "warmup_steps", "seed", "frames_per_batch", "max_frames", "init_dir")


def history(results_paths: list[str]) -> dict[str, list[dict]]:
    """Per model, its runs in order: steps, seconds, settings; refuses a run of another configuration."""
    runs: dict[str, list[dict]] = {name: [] for name in MODELS}
    for path in results_paths:
        with open(path) as f:
            results = json.load(f)
        args = results["args"]
        updates = dict(item.split("=", 1) for item in args.get("preset_update") or [])
        for name, run in (results.get("runs") or {}).items():
            preset = ModelConfig.preset(name)
            trained_as = ModelConfig.model_validate({**preset.model_dump(), **updates})
            if trained_as != preset:
                raise SystemExit(f"{path}: {name} was trained as {trained_as}, not as the preset {preset}")
            settings = {key: args.get(key) for key in RUN_SETTINGS}
            runs[name].append({"steps": run["steps"], "seconds": round(run["seconds"], 1),
                               "scheduled_steps": args.get("steps"), **settings})
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("final_dir")
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out-dir", default="zipmap_core/assets")
    args = ap.parse_args(argv)
    runs = history(args.results)
    totals = {name: sum(r["steps"] for r in runs[name]) for name in MODELS}
    if len(set(totals.values())) != 1:
        raise SystemExit(f"the two models trained different steps ({totals}): the demo compares them at equal steps")
    for name in MODELS:
        source = os.path.join(args.final_dir, f"{name}.safetensors")
        with safetensors.safe_open(source, "pt") as f:
            metadata = dict(f.metadata())
            if metadata.get("steps") != str(runs[name][-1]["steps"]):
                raise SystemExit(f"{source} has {metadata.get('steps')} steps, its last run {runs[name][-1]['steps']}")
        tensors = safetensors.torch.load_file(source)
        metadata.update(
            model_config=ModelConfig.preset(name).model_dump_json(),
            steps=str(totals[name]),
            seconds=f"{sum(r['seconds'] for r in runs[name]):.1f}",
            runs=json.dumps(runs[name]),
        )
        target = os.path.join(args.out_dir, f"{name}.safetensors")
        safetensors.torch.save_file(tensors, target, metadata=metadata)
        print(f"{target}: {metadata['steps']} steps, {metadata['seconds']} s over {len(runs[name])} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
