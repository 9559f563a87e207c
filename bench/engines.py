"""Offline vs chunked engine: wall time and peak GPU memory per sequence length.

    python bench/engines.py --frames 100 250 500 750 --chunked-only 2000 5000 10000

Full-size random weights (the architecture decides the cost, not the values), input
[N, 3, H, W], bf16 autocast as in the released code. Each run consumes the engine's per-frame
results on the host (the cost a writer pays) without keeping them. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time

import torch
from timing import measure, pinned_gib, run  # bench/timing.py (this script's folder is on sys.path)

from zipmap_core import EngineConfig, ModelConfig, ZipMap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, nargs="*", default=[100, 250, 500, 750])
    ap.add_argument("--chunked-only", type=int, nargs="*", default=[2000, 5000, 10000])
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--host-budget-gb", type=float, default=24.0)
    ap.add_argument("--gpu-cache-gb", type=float, default=6.0)
    ap.add_argument("--head-inputs", default="auto", choices=["auto", "keep", "recompute"])
    ap.add_argument("--fast", action="store_true", help="the fast path (bf16 weights, bf16 heads)")
    ap.add_argument("--compile", action="store_true", help="the fast path compiled (implies --fast)")
    ap.add_argument("--warm-each-up-to", type=int, default=2000,
                    help="compiled: one unmeasured run of each length up to this many frames first")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    rows = []
    fast = {"fast": args.fast or args.compile, "compile": args.compile}
    offline = EngineConfig(mode="offline", dtype=args.dtype, **fast)
    chunked = EngineConfig(
        mode="chunked", dtype=args.dtype, chunk_size=args.chunk_size, host_memory_budget_gb=args.host_budget_gb,
        gpu_cache_gb=args.gpu_cache_gb, head_inputs=args.head_inputs, **fast,
    )
    start = time.perf_counter()
    for n in (4, 2 * args.chunk_size + 3):  # two shapes: a compiled model then treats the frame count as dynamic
        warm = torch.rand(n, 3, args.height, args.width)
        run(model, warm, chunked)
        if args.frames:
            run(model, warm, offline)
    print(f"warm-up (compilation included): {time.perf_counter() - start:.0f} s", flush=True)

    for n in args.frames + args.chunked_only:
        images = torch.rand(n, 3, args.height, args.width)
        repeats = args.repeats if n <= 1000 else 1
        first = None
        if args.compile and n <= args.warm_each_up_to:
            # a new length can still recompile (past 2**31 elements inductor needs int64 indexing),
            # and a longer sequence than before pins more host memory (about a second per GB)
            first = run(model, images, chunked)[0]
            if n in args.frames:
                run(model, images, offline)
        row = {"frames": n, "chunked": measure(model, images, chunked, repeats), "chunked_first_run_s": first}
        if n in args.frames:
            row["offline"] = measure(model, images, offline, repeats)
        row["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row["pinned_gib"] = pinned_gib()
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every row: a run cut short still leaves what it measured
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        del images
        gc.collect()

    def fmt(v, f):
        return "-" if v is None else f.format(v)

    print(f"\n{torch.cuda.get_device_name()}, {args.preset}, {args.dtype}, chunk {args.chunk_size}, "
          f"{'compiled ' if args.compile else ''}{'fast path, ' if fast['fast'] else ''}{args.height}x{args.width}, "
          f"median of {args.repeats} (1 above 1000 frames), "
          f"GPU cache {args.gpu_cache_gb} GiB, host budget {args.host_budget_gb} GiB, head inputs {args.head_inputs}\n")
    print("| N | offline s | offline GiB | chunked s | chunked GiB | chunked/offline time | chunked frames/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        off, ch = r.get("offline", {}), r["chunked"]
        ratio = ch["time_s"] / off["time_s"] if off.get("time_s") and ch.get("time_s") else None
        fps = r["frames"] / ch["time_s"] if ch.get("time_s") else None
        print(f"| {r['frames']} | {fmt(off.get('time_s'), '{:.2f}')} | {fmt(off.get('peak_gib'), '{:.1f}')} | "
              f"{fmt(ch.get('time_s'), '{:.2f}')} | {fmt(ch.get('peak_gib'), '{:.1f}')} | {fmt(ratio, '{:.3f}')} | "
              f"{fmt(fps, '{:.1f}')} |")


if __name__ == "__main__":
    main()
