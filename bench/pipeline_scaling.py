"""Scaling of the whole pipeline over GPUs: one job run with 1, 2, ... model actors.

    # on a machine with 2 GPUs (one actor per GPU):
    python bench/pipeline_scaling.py --preset offline_affine --device cuda --size 518 \
        --sequences 32 --frames 100 --dtype bfloat16 --fast --cpus-per-actor 8 --actors 1 2
    # CPU smoke check:
    python bench/pipeline_scaling.py --preset tiny --device cpu --actors 1 2

Every run reads the same synthetic sequences and writes its own run folder. Throughput is the
steady-state figure of `pipeline_throughput` (actor start-up left out); scaling is each run's
frames/s over the single-actor run's. The outputs of every run are then compared with the first:
the frames tables value for value and the PLY files byte for byte, since a sequence must not
depend on which GPU, or how many, computed it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_throughput as throughput  # noqa: E402  (the synthetic inputs and one timed run)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    work, input_prefix = throughput.prepare_inputs(args, "zipmap-scaling-")
    runs = []
    for n in args.actors:
        args.num_actors = n
        result = throughput._bench_pipeline(args, input_prefix, str(work / f"output-{n}-actors"))
        result["fingerprint"] = _fingerprint(result["run_uri"])
        runs.append(result)
        print(
            f"{n} actor(s): {result['steady_frames_per_s']:9.2f} frames/s steady, "
            f"{result['frames_per_s']:.2f} end to end ({result['frames']} frames, {result['seconds']:.1f}s)",
            flush=True,
        )
    base = runs[0]
    for run in runs:
        run["scaling"] = run["steady_frames_per_s"] / base["steady_frames_per_s"]
        run["scaling_end_to_end"] = run["frames_per_s"] / base["frames_per_s"]
        run["efficiency"] = run["scaling"] * base["num_actors"] / run["num_actors"]
        run["differences"] = _differences(base["fingerprint"], run["fingerprint"])
    print("| actors | frames/s steady | scaling | efficiency | frames/s end to end | outputs equal to first run |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        same = "yes" if not run["differences"] else f"no: {'; '.join(run['differences'][:3])}"
        print(
            f"| {run['num_actors']} | {run['steady_frames_per_s']:.2f} | {run['scaling']:.3f} | "
            f"{run['efficiency']:.3f} | {run['frames_per_s']:.2f} | {same} |"
        )
    report = {"runs": [{k: v for k, v in r.items() if k != "fingerprint"} for r in runs]}
    print(json.dumps(report))
    return report


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor counts, one run each")
    throughput.add_run_arguments(p)
    p.set_defaults(sequences=8)
    return throughput.resolve_size(p.parse_args(argv))


def _fingerprint(run_uri: str) -> dict:
    """What must not change between runs: every frame row, and a hash of every point cloud."""
    from pipeline import read_outputs
    from pipeline.layout import POINTS

    outputs = read_outputs(run_uri)
    plys = {sid: outputs.layout.final(sid, POINTS) for sid in outputs.committed}

    def digest(uri: str) -> str:
        with outputs.store.open(uri, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    with ThreadPoolExecutor(8) as pool:  # hashlib releases the GIL on large buffers
        hashes = dict(zip(plys, pool.map(digest, plys.values())))
    return {"frames": outputs.frames, "ply_sha256": hashes}


def _differences(a: dict, b: dict) -> list[str]:
    """Readable differences between two fingerprints (empty when the outputs are identical)."""
    import numpy as np

    found = []
    if sorted(a["ply_sha256"]) != sorted(b["ply_sha256"]):
        found.append(f"sequences differ: {sorted(set(a['ply_sha256']) ^ set(b['ply_sha256']))}")
    bad = sorted(s for s in a["ply_sha256"] if s in b["ply_sha256"] and a["ply_sha256"][s] != b["ply_sha256"][s])
    if bad:
        found.append(f"{len(bad)} PLY file(s) differ, e.g. {bad[0]}")
    fa, fb = a["frames"], b["frames"]
    if fa.num_rows != fb.num_rows:
        found.append(f"frames tables have {fa.num_rows} and {fb.num_rows} rows")
    elif not fa.equals(fb):
        for name in fa.column_names:
            ca, cb = fa.column(name).to_pylist(), fb.column(name).to_pylist()
            if ca != cb:
                try:
                    diff = float(np.nanmax(np.abs(np.asarray(ca, dtype=np.float64) - np.asarray(cb, dtype=np.float64))))
                    found.append(f"frames.{name} differs (max abs {diff:.3g})")
                except (TypeError, ValueError):
                    found.append(f"frames.{name} differs")
    return found


if __name__ == "__main__":
    main()
