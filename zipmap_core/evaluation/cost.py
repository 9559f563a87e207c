"""The cost side of TTT vs full attention: time and peak memory of a reconstruction per sequence length.

ZipMap's TTT global layers do work linear in the number of frames where full global attention
(VGGT) does work quadratic in it. `measure_costs` measures what that means on the machine it runs
on: the offline engine in float32 over random frames (the cost depends on the architecture, not
on the weights or the pixels), every frame's results reaching the host as a writer would take them.

- time: the median wall time of `repeats` runs after one warm-up run; a configuration whose run
  takes longer than `long_run_s` is not repeated (`ForwardCost.runs` says how many runs it got);
- memory: the peak of what a run allocates on the device above what was allocated before it
  (model weights and input frames do not count). On CUDA `torch.cuda.max_memory_allocated`; on
  the CPU the running sum of the allocations and frees that PyTorch's profiler records for its
  CPU allocator (every tensor and kernel workspace, which Python's tracemalloc cannot see),
  during the warm-up run.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch

from zipmap_core.config import ModelConfig
from zipmap_core.engines import EngineConfig, reconstruct
from zipmap_core.models.zipmap import ZipMap

MIB = 2**20
ENGINE = EngineConfig(mode="offline", dtype="float32", fast=False, compile=False, frame_parallel=1, cameras="network")


@dataclass(frozen=True)
class ForwardCost:
    """One model reconstructing one sequence length: `seconds` is the median of `runs` timed runs."""

    model: str
    frames: int
    height: int
    width: int
    seconds: float
    runs: int
    peak_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure_costs(
    configs: Sequence[ModelConfig],
    frames: Iterable[int],
    height: int,
    width: int,
    *,
    device: str | torch.device = "cpu",
    repeats: int = 3,
    long_run_s: float = 2.0,
    threads: int | None = None,
    seed: int = 0,
) -> list[ForwardCost]:
    """Time and peak memory of reconstructing each number of `frames` random frames of
    height x width with each config's model (random weights); ordered by config, then frames.
    `threads`: PyTorch's CPU threads during the measurement (default: as they are), restored after."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    frames = list(frames)
    if not frames or min(frames) < 1:
        raise ValueError(f"frames must be positive sequence lengths, got {frames}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    costs = []
    try:
        for config in configs:
            model = ZipMap(config).eval().to(device)  # untouched global RNG: the values do not change the cost
            for n in frames:
                # on the device already, so that the peak counts what the run allocates, not the input
                images = torch.rand(n, 3, height, width, generator=generator).to(device)
                costs.append(_measure(model, config.name, images, device, repeats, long_run_s))
            del model
    finally:
        torch.set_num_threads(threads_before)
    return costs


def _measure(model: ZipMap, name: str, images: torch.Tensor, device, repeats: int, long_run_s: float) -> ForwardCost:
    def run() -> None:
        for _ in reconstruct(model, images, ENGINE, device=device):  # each frame reaches the host, then goes
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    peak = peak_bytes(run, device)  # the warm-up run
    times: list[float] = []
    while len(times) < repeats and not (times and times[-1] > long_run_s):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    S, _, H, W = images.shape
    return ForwardCost(name, S, H, W, statistics.median(times), len(times), peak)


def peak_bytes(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes that PyTorch allocates on `device` while fn() runs, above what was allocated before."""
    device = torch.device(device)
    gc.collect()  # garbage from before is freed now, not inside fn (the CPU profiler cannot size it)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu and cuda devices, not {device.type}")
    # libkineto prints a line on every profiler start and stop at its default log level; level 6
    # keeps its errors and drops those (read when the profiler first starts in this process)
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):  # allocations count positive, frees negative
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def describe_device(device: str | torch.device, threads: int | None = None) -> str:
    """What the numbers were measured on, in a few words."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = threads or torch.get_num_threads()
    return f"{device.type}, {threads} thread{'s' if threads > 1 else ''}"


def format_costs(costs: Sequence[ForwardCost]) -> str:
    """One row per sequence length with a time and a memory column per model, then how each grew
    between the two longest sequences."""
    models = list(dict.fromkeys(c.model for c in costs))
    frames = sorted({c.frames for c in costs})
    by = {(c.model, c.frames): c for c in costs}
    width = max(30, *(len(m) + 2 for m in models))
    lines = [f"{'frames':>6}  " + "".join(f"{m:<{width}}" for m in models).rstrip()]
    for n in frames:
        lines.append(f"{n:>6}  " + "".join(f"{_cell(by.get((m, n))):<{width}}" for m in models).rstrip())
    if len(frames) >= 2:
        a, b = frames[-2], frames[-1]
        growth = [_growth(by[m, a], by[m, b]) for m in models if (m, a) in by and (m, b) in by]
        if growth:
            lines.append(f"from {a} to {b} frames (x{b / a:g}): " + "; ".join(growth))
    return "\n".join(lines)


def _growth(short: ForwardCost, long: ForwardCost) -> str:
    time_x = long.seconds / short.seconds if short.seconds > 0 else math.inf
    memory_x = long.peak_bytes / short.peak_bytes if short.peak_bytes > 0 else math.inf
    return f"{long.model} time x{time_x:.1f}, memory x{memory_x:.1f}"


def _cell(cost: ForwardCost | None) -> str:
    if cost is None:
        return "not measured"
    seconds = f"{cost.seconds * 1e3:7.1f} ms" if cost.seconds < 1 else f"{cost.seconds:7.2f} s "
    runs = "" if cost.runs > 1 else " (1 run)"
    return f"{seconds} {cost.peak_bytes / MIB:7.1f} MiB{runs}"
