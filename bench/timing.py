"""Timing of one engine run on the GPU, shared by the benchmark scripts."""

from __future__ import annotations

import gc
import statistics
import time

import torch

from zipmap_core import reconstruct


def run(model, images, engine, keep: bool = False, device: str = "cuda") -> tuple[float, float | None, list]:
    """(seconds, peak GiB, frames): every frame's results reach the host; kept only if asked.
    On the CPU (smoke runs) the peak is None."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    frames = [f if keep else None for f in reconstruct(model, images, engine, device=device)]
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if cuda else None, frames


def measure(model, images, engine, repeats: int, device: str = "cuda") -> dict:
    """Median time and largest peak memory over `repeats` runs; None for both when out of memory."""
    try:
        runs = [run(model, images, engine, device=device) for _ in range(repeats)]
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return {"time_s": None, "peak_gib": None, "error": "out of GPU memory"}
    peaks = [r[1] for r in runs if r[1] is not None]
    return {
        "time_s": statistics.median(r[0] for r in runs),
        "peak_gib": max(peaks) if peaks else None,
        "frames": len(runs[0][2]),
    }


def gpu_time(fn, repeats: int = 3) -> float:
    """Median seconds of fn() on the GPU by CUDA events (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def pinned_gib() -> float | None:
    """Pinned host memory held by PyTorch's caching host allocator (cached blocks included)."""
    stats = getattr(torch.cuda.memory, "host_memory_stats", None)
    if stats is None:
        return None
    current = [v for k, v in stats().items() if k.startswith("allocated_bytes") and k.endswith("current")]
    return current[0] / 2**30 if current else None
