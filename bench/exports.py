"""What the exports and the report's previews cost per sequence, and how big they are.

    python bench/exports.py                            # 1 sequence x 100 frames, 518 wide, tiny model, CPU
    python bench/exports.py --frames 4 --size 112      # a smoke check

One run of the pipeline on the sequence with every output on (save_depth, exports colmap and
nerfstudio, the report), then, on that finished run, `zipmap-pipeline export` of each format
alone and the previews alone, timed (wall clock, one sequence: reading the run's outputs,
re-decoding and encoding the frames, sampling the cloud, writing and committing). The sizes are
those of the committed folders; the run's own outputs (frames table, PLY, depth) for comparison.
Within the run, the frame files are encoded by the frame writers while the engine computes and
the models are written after it: the manifest's write_s (writing the engine did not hide, plus the
commit) is printed for that run and for one with no exports and no report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    from bench.pipeline_throughput import prepare_inputs
    from pipeline import read_outputs, run_job
    from pipeline.exports.run import export_run, write_derived
    from pipeline.exports.writers import derived_writers
    from pipeline.report.options import ReportSpec
    from pipeline.spec import load_spec

    args.sequences = 1
    work, input_prefix = prepare_inputs(args, "zipmap-bench-exports-")
    base = {
        "input": {"prefix": input_prefix},
        "output": str(work / "runs"),
        "model": {
            "preset": args.preset, "checkpoint": args.checkpoint, "allow_random_weights": args.checkpoint is None,
        },
        "preprocess": {"size": args.size},
        "save_depth": True,
        "resources": {"device": args.device, "num_actors": 1, "cpus_per_actor": args.cpus_per_actor},
    }
    plain = run_job(load_spec(base, ["report.enabled=false"]).with_run_id("plain"))
    full = run_job(load_spec(base, ["exports=[colmap, nerfstudio]"]).with_run_id("full"))
    write_s = {}
    for name, summary in (("no exports, no report", plain), ("colmap + nerfstudio + report", full)):
        (row,) = read_outputs(summary.run_uri).manifest.to_pylist()
        write_s[name] = {k: row[k] for k in ("infer_s", "write_s", "total_s")}

    run_uri = plain.run_uri
    (sid,) = read_outputs(run_uri).committed
    frames = read_outputs(run_uri).committed[sid].num_frames
    jobs = {
        "colmap": lambda: export_run(run_uri, ["colmap"]),
        "colmap (text too)": lambda: export_run(run_uri, [{"format": "colmap", "model_format": "both"}]),
        "nerfstudio": lambda: export_run(run_uri, ["nerfstudio"]),
        "previews": lambda: write_derived(run_uri, derived_writers([], ReportSpec())),
    }
    folders = {"colmap": "exports/colmap", "colmap (text too)": "exports/colmap", "nerfstudio": "exports/nerfstudio",
               "previews": "previews"}
    results = {}
    for name, job in jobs.items():
        start = time.perf_counter()
        outcome = job()
        seconds = time.perf_counter() - start
        assert not outcome.failed, outcome.failed
        folder = os.path.join(run_uri, folders[name], sid)
        results[name] = {"seconds": seconds, "bytes": _size(folder), "parts": _parts(folder)}
    own = {
        kind: _size(os.path.join(run_uri, path))
        for kind, path in (("frames", f"frames/sequence_id={sid}"), ("depth", f"depth/sequence_id={sid}"),
                           ("points", f"points/{sid}.ply"))
    }

    print(f"one sequence of {frames} frames at {args.size} wide, {args.preset} model on {args.device}\n")
    print("| output | export command, s | s per frame | size, MB | of which |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        parts = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in r["parts"].items())
        print(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / frames:.3f} | {r['bytes'] / 1e6:.2f} | {parts} |")
    print("\nthe run's own outputs: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in own.items()))
    print("\nin the run (manifest): ")
    for name, t in write_s.items():
        print(f"  {name:30s} infer {t['infer_s']:.2f} s, write_s {t['write_s']:.2f} s, total {t['total_s']:.2f} s")
    out = {"frames": frames, "size": args.size, "exports": results, "run_outputs": own, "in_run": write_s}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(b, n)) for b, _, names in os.walk(path) for n in names)


def _parts(folder: str) -> dict[str, int]:
    """Bytes per top-level entry (images/, depth/, sparse/, transforms.json, ...)."""
    return {name: _size(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=518, help="model input width (frames are 4:3)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--checkpoint", default=None, help="default: random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--input", default=None, help="a prefix with one sequence (default: synthetic frames)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    return ap.parse_args(argv)


if __name__ == "__main__":
    main()
