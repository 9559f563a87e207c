"""Where the time goes: torch.profiler over one offline and one chunked run, plus copy bandwidth.

    python bench/profile_engines.py --frames 96 --chunk-size 32
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from torch.profiler import ProfilerActivity, profile

from zipmap_core import EngineConfig, ModelConfig, ZipMap, reconstruct


def copy_bandwidth(nbytes: int = 1 << 28) -> None:
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    for pinned in (True, False):
        host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
        h2d, d2h = partial(dev.copy_, host, non_blocking=True), partial(host.copy_, dev, non_blocking=True)
        for name, fn in (("H2D", h2d), ("D2H", d2h)):
            fn()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            print(f"{name} pinned={pinned}: {5 * nbytes / (time.perf_counter() - t) / 1e9:.1f} GB/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=96)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    args = ap.parse_args()
    copy_bandwidth()
    with torch.device("cuda"):
        model = ZipMap(ModelConfig.preset("offline_affine")).eval()
    images = torch.rand(args.frames, 3, args.height, args.width).pin_memory()
    for engine in (
        EngineConfig(dtype="bfloat16"),
        EngineConfig(mode="chunked", chunk_size=args.chunk_size, dtype="bfloat16"),
    ):
        for _ in reconstruct(model, images[:8], engine, device="cuda"):
            pass
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            t = time.perf_counter()
            for _ in reconstruct(model, images, engine, device="cuda"):
                pass
            torch.cuda.synchronize()
            wall = time.perf_counter() - t
        print(f"\n=== {engine.mode}: {wall:.2f} s (profiled) ===")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=50))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=50))


if __name__ == "__main__":
    main()
