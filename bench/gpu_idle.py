"""Where a long chunked run leaves the GPU idle: kernel-busy time against wall time, over the run.

    python bench/gpu_idle.py --frames 3000 --json idle.json

The chunked engine at `--frames` (random full-size weights, compiled bf16 fast path, depth head
only, images in pageable host memory, every frame's results copied to the host: the settings of
`bench/long_sequences.py`) runs once unprofiled (a first run: pinned host memory emptied before),
then under torch.profiler (CUDA activity only) as a first run again and as a warm run. For each
profiled run: wall time, the union of kernel intervals (copies on the copy engines not counted),
idle time in each tenth of the run, and the longest gaps with the kernels on either side.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from long_sequences import empty_host_cache  # bench/ (this script's folder is on sys.path)
from timing import run
from torch.profiler import ProfilerActivity, profile

from zipmap_core import EngineConfig, ModelConfig, ZipMap


def kernel_intervals(prof) -> list[tuple[int, int, str]]:
    """(start ns, end ns, name) of every kernel the profile saw (memcpy/memset left out)."""
    out = []
    for e in prof.profiler.kineto_results.events():
        if e.device_type() != torch.autograd.DeviceType.CUDA:
            continue
        name = e.name()
        if name.startswith(("Memcpy", "Memset")):
            continue
        start = e.start_ns()
        out.append((start, start + e.duration_ns(), name))
    out.sort()
    return out


def idle_report(intervals: list[tuple[int, int, str]], wall_s: float, deciles: int = 10, top: int = 12) -> dict:
    """Busy union, idle per tenth of the kernel span, and the longest gaps."""
    busy, gaps = 0, []
    cur_start, cur_end, cur_name = intervals[0]  # the busy stretch so far, and its last kernel
    for start, end, name in intervals[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            gaps.append((start - cur_end, cur_end, cur_name, name))
            cur_start, cur_end, cur_name = start, end, name
        elif end > cur_end:
            cur_end, cur_name = end, name
    busy += cur_end - cur_start
    t0, t1 = intervals[0][0], cur_end
    span = t1 - t0
    per_decile = [0.0] * deciles
    for length, at, _, _ in gaps:
        per_decile[min(deciles - 1, (at - t0) * deciles // span)] += length / 1e9
    gaps.sort(reverse=True)
    return {
        "wall_s": wall_s,
        "kernel_span_s": span / 1e9,
        "busy_s": busy / 1e9,
        "idle_in_span_s": (span - busy) / 1e9,
        "outside_span_s": wall_s - span / 1e9,
        "busy_of_wall": busy / 1e9 / wall_s,
        "idle_per_tenth_s": [round(x, 3) for x in per_decile],
        "gaps_over_1ms": sum(1 for g in gaps if g[0] > 1e6),
        "idle_in_gaps_over_1ms_s": sum(g[0] for g in gaps if g[0] > 1e6) / 1e9,
        "longest": [
            {"ms": g[0] / 1e6, "at_s": (g[1] - t0) / 1e9, "after": g[2][:90], "before": g[3][:90]} for g in gaps[:top]
        ],
    }


def profiled(model, images, engine) -> dict:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        seconds = run(model, images, engine)[0]
    return idle_report(kernel_intervals(prof), seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--host-budget-gb", type=float, default=64.0)
    ap.add_argument("--gpu-cache-gb", type=float, default=6.0)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    engine = EngineConfig(mode="chunked", chunk_size=args.chunk_size, host_memory_budget_gb=args.host_budget_gb,
                          gpu_cache_gb=args.gpu_cache_gb, dtype="bfloat16", fast=True, compile=True)
    base = torch.rand(64, 3, args.height, args.width)
    images = base.repeat(-(-args.frames // 64), 1, 1, 1)[: args.frames]
    start = time.perf_counter()
    for n in (4, 2 * args.chunk_size + 3):  # compilation, as bench/long_sequences.py warms up
        run(model, images[:n], engine)
    result = {"args": vars(args), "device": torch.cuda.get_device_name(), "warm_up_s": time.perf_counter() - start}
    empty_host_cache()
    result["first_unprofiled_s"] = run(model, images, engine)[0]
    empty_host_cache()
    result["first"] = profiled(model, images, engine)
    result["warm"] = profiled(model, images, engine)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
