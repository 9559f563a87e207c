"""How fast a model actor can prepare frames for writing while its engine thread is busy.

    python bench/frame_handoff.py --writers 0 1 2 --frames 48

Emulates a model actor on the host alone: a Python thread that never waits (the eager engine
launching kernels) runs beside `pipeline.overlap.map_in_processes`, which prepares 518x392
frames either in this process (0 writers) or in writer processes, with frames handed over
through the pool's pipes or (what the actor does) through files. Prints frames/s and how much
the busy thread still got done (its loop rate, millions of iterations per second).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.outputs import FrameFormat, prepare_frame  # noqa: E402
from pipeline.overlap import frame_writers, map_in_processes, ordered_map  # noqa: E402
from zipmap_core.engines.results import FramePrediction  # noqa: E402

H, W = 392, 518


def _frames(n: int) -> list[FramePrediction]:
    rng = np.random.default_rng(0)
    extrinsic = np.hstack([np.eye(3), np.ones((3, 1))]).astype(np.float32)
    intrinsic = np.array([[400, 0, W / 2], [0, 400, H / 2], [0, 0, 1]], np.float32)
    return [
        FramePrediction(
            i,
            extrinsic,
            intrinsic,
            rng.uniform(0.5, 3, (H, W)).astype(np.float32),
            rng.uniform(1, 3, (H, W)).astype(np.float32),
            rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            1.0,
        )
        for i in range(n)
    ]


def _measure(run, busy: bool) -> tuple[float, float]:
    """(seconds of `run()`, loop rate of a busy thread meanwhile in M/s; 0 when not busy)."""
    stop = threading.Event()
    count = [0]

    def spin():
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    if busy:
        thread.start()
        time.sleep(0.2)
    start_count, start = count[0], time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    loops = count[0] - start_count
    stop.set()
    if busy:
        thread.join()
    return seconds, loops / seconds / 1e6


def _run_all(mapper, prepare, frames, pool) -> None:
    list(mapper(prepare, frames, pool))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writers", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--frames", type=int, default=48)
    args = ap.parse_args(argv)
    frames = _frames(args.frames)
    fmt = FrameFormat("bench", 1.0, False)
    prepare = partial(prepare_frame, fmt)
    print("| writers | handoff | engine thread | frames/s | busy thread M/s |")
    print("|---|---|---|---|---|")
    for writers in args.writers:
        pool = frame_writers(writers)
        handoffs = {"files": map_in_processes, "pipes": ordered_map} if pool else {"in process": map_in_processes}
        for name, mapper in handoffs.items():
            list(mapper(prepare, frames[:4], pool))  # start the processes, warm caches
            for busy in (False, True):
                seconds, rate = _measure(partial(_run_all, mapper, prepare, frames, pool), busy)
                state = "busy" if busy else "idle"
                print(f"| {writers} | {name} | {state} | {len(frames) / seconds:.1f} | {rate:.2f} |", flush=True)
        if pool is not None:
            pool.shutdown()


if __name__ == "__main__":
    main()
