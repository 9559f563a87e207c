"""One GPU, long sequences: first runs of the chunked engine, the previous store against the current.

    python bench/long_sequences.py --frames 750 10000 2000 5000 --old-frames 750 2000 --json long.json

Both in one process, after one compilation warm-up of each. "old" is the previous behaviour:
the dense heads' inputs stored as their four projections (`DPTHead.reassembled_early` all False,
5.8 MB a frame at 392x518; past about 7400 frames they no longer fit a 64 GiB host budget next to
the tokens and the trunk runs a second time for the heads) and pinned host memory from
cudaHostAlloc. "new": the compact head inputs (2.3 MB a frame) and pinned memory from
cudaHostRegister with its pages faulted in by several threads (PyTorch's
`pinned_use_cuda_host_register`). Every measured run starts with PyTorch's pinned-memory cache
emptied, so it pays for all the pinning it needs: first runs. Runs of up to 1000 frames are then
repeated (median of the repeats as "warm"), and so is the new 10000-frame run (warm: what a
process that pinned its memory at start-up or for an earlier sequence pays). Full-size random
weights, compiled bf16 fast path, depth head only, images in (pageable) host memory, every
frame's results copied to the host. "on-demand": the new store with its host memory pinned when
a put needs a slab, as before the store pinned ahead on a background thread (`--on-demand-frames`;
"pinning s" of a new run then counts the background thread's pinning, not time the run waited).
Prints a table and the new/old ratios, and the new runs against the README's runs of the
previous store (750 frames 6.42 s warm; 5000 frames 98.0 s first run; 10000 frames 136.7 s,
trunk twice, no pinning in that run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import time

import torch
from timing import run  # bench/timing.py (this script's folder is on sys.path)

from zipmap_core import EngineConfig, ModelConfig, ZipMap
from zipmap_core.engines.store import PinnedPool

# the README's runs of the previous store (bench/engines.py, another day and machine): (run, seconds)
README_OLD = {750: ("warm", 6.42), 5000: ("first", 98.0), 10000: ("first", 136.7)}
README_NOTES = {
    750: "median of 3 after an unmeasured run",
    5000: "a first run, 38.6 GiB pinned in it",
    10000: "a first run at that length, trunk twice, no pinning in it: earlier runs had pinned enough",
}


def _host_stats() -> dict:
    stats = getattr(torch.cuda.memory, "host_memory_stats", None)
    return stats() if stats is not None and torch.cuda.is_available() else {}


def empty_host_cache() -> None:
    """Give PyTorch's cached pinned blocks back, so that the next run pins from scratch."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        empty = getattr(getattr(torch, "accelerator", None), "empty_host_cache", None) or torch._C._host_emptyCache
        empty()


def _pinning(register_threads: int) -> str:
    """Switch PyTorch's pinned allocator to cudaHostRegister, its pages faulted in by
    `register_threads` threads (only with its cache empty: it frees a block by the mode in force at
    the time). 0: leave it as the process started (cudaHostAlloc unless PYTORCH_CUDA_ALLOC_CONF
    says otherwise)."""
    empty_host_cache()
    if not register_threads:
        return f"as started (PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')!r})"
    setting = f"pinned_use_cuda_host_register:True,pinned_num_register_threads:{register_threads}"
    torch.cuda.memory._set_allocator_settings(setting)
    return setting


def pin_rate(nbytes: int) -> dict:
    """Seconds to pin `nbytes` in 2 GiB blocks (the chunked store's slabs), from an empty cache."""
    empty_host_cache()
    start = time.perf_counter()
    blocks = [torch.empty(2**31, dtype=torch.uint8, pin_memory=True) for _ in range(max(1, nbytes // 2**31))]
    seconds = time.perf_counter() - start
    pinned = sum(b.numel() for b in blocks)
    del blocks
    empty_host_cache()
    return {"gib": pinned / 2**30, "seconds": seconds, "s_per_gib": seconds * 2**30 / pinned}


def first_run(model, images, engine, repeats: int, device: str) -> dict:
    empty_host_cache()
    before = _host_stats().get("host_alloc_time.total", 0)
    seconds, peak, frames = run(model, images, engine, device=device)
    stats = _host_stats()
    row = {
        "frames": len(frames), "first_s": seconds, "frames_per_s": len(frames) / seconds, "peak_gib": peak,
        "pinned_gib": stats.get("allocated_bytes.current", 0) / 2**30,
        "pinning_s": (stats.get("host_alloc_time.total", 0) - before) / 1e6 if stats else None,
    }
    if repeats > 1:  # then warm: pinned memory cached, nothing left to compile
        row["warm_s"] = statistics.median(run(model, images, engine, device=device)[0] for _ in range(repeats - 1))
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, nargs="*", default=[750, 10000, 2000, 5000], help="new: these lengths")
    ap.add_argument("--old-frames", type=int, nargs="*", default=[750, 2000], help="old: these lengths")
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--host-budget-gb", type=float, default=64.0)
    ap.add_argument("--gpu-cache-gb", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each length up to 1000 frames (first + warm)")
    ap.add_argument("--warm-long", type=int, nargs="*", default=[10000],
                    help="new: lengths above 1000 frames also run a second time, warm (pinned memory cached, as "
                         "in a process that pinned it at start-up or for an earlier sequence)")
    ap.add_argument("--register-threads", type=int, nargs="*", default=[8, 16],
                    help="new pinning: threads that fault pages in before cudaHostRegister (the fastest is used)")
    ap.add_argument("--pin-probe-gib", type=float, default=4.0, help="pinned bytes of each pinning-rate probe")
    ap.add_argument("--on-demand-frames", type=int, nargs="*", default=[],
                    help="new: these lengths again with the store pinning on demand, as before it pinned ahead "
                         "on a background thread (the baseline of that change)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="also write the results here (after every run)")
    args = ap.parse_args(argv)

    cuda = torch.device(args.device).type == "cuda"
    torch.manual_seed(0)
    with torch.device(args.device):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    precision = {"dtype": "bfloat16", "fast": True, "compile": True} if cuda else {"dtype": "float32"}
    engine = EngineConfig(mode="chunked", chunk_size=args.chunk_size, host_memory_budget_gb=args.host_budget_gb,
                          gpu_cache_gb=args.gpu_cache_gb, **precision)
    heads = model.dense_heads(local_points=False).values()
    variants = {"old": (False,) * 4, "new": next(iter(heads)).reassembled_early}
    result: dict = {"args": vars(args), "device": torch.cuda.get_device_name() if cuda else "cpu", "runs": []}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)

    n_max = max(args.frames + args.old_frames + args.on_demand_frames)
    base = torch.rand(min(n_max, 64), 3, args.height, args.width)
    images = base.repeat(-(-n_max // len(base)), 1, 1, 1)[:n_max]  # content does not change the cost
    start = time.perf_counter()
    for name, early in variants.items():
        if not (args.old_frames if name == "old" else args.frames):
            continue  # a variant that does not run is not compiled either
        for head in heads:
            head.reassembled_early = early
        # two shapes: the compiled model then treats the frame count as dynamic (nothing to compile on the CPU)
        for n in (4, 2 * args.chunk_size + 3) if cuda else (2,):
            run(model, images[:n], engine, device=args.device)
    result["warm_up_s"] = time.perf_counter() - start
    print(f"warm-up (compilation included): {result['warm_up_s']:.0f} s", flush=True)

    pin_ahead = PinnedPool.pin_ahead
    for name, lengths in (("old", args.old_frames), ("new", args.frames), ("on-demand", args.on_demand_frames)):
        if name == "on-demand":  # the new store, its host memory pinned when a put needs it
            PinnedPool.pin_ahead = lambda self, nbytes: None
        elif cuda:
            threads = 0
            if name == "new" and args.register_threads:
                probes = {}
                try:
                    for t in args.register_threads:
                        _pinning(t)
                        probes[t] = pin_rate(int(args.pin_probe_gib * 2**30))
                except RuntimeError as exc:  # this PyTorch cannot switch at run time: new keeps cudaHostAlloc
                    print(f"cudaHostRegister pinning unavailable: {exc}", flush=True)
                    result["pin_probe_register_error"] = str(exc)
                result["pin_probe_register"] = probes
                threads = min(probes, key=lambda t: probes[t]["s_per_gib"]) if probes else 0
            result[f"pinning_{name}"] = _pinning(threads)
            if name == "old":
                result["pin_probe_host_alloc"] = pin_rate(int(args.pin_probe_gib * 2**30))
            shown = {k: v for k, v in result.items() if k.startswith("pin_probe")}
            print(f"{name}: {result[f'pinning_{name}']}", shown, flush=True)
        for head in heads:
            head.reassembled_early = variants["new" if name == "on-demand" else name]
        for n in lengths:
            repeats = args.repeats if n <= 1000 else 1 + (name == "new" and n in args.warm_long)
            row = {"variant": name, **first_run(model, images[:n], engine, repeats, args.device)}
            row["host_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            save()
    PinnedPool.pin_ahead = pin_ahead
    for head in heads:
        head.reassembled_early = variants["new"]

    def fmt(v, f="{:.2f}"):
        return "-" if v is None else f.format(v)

    old = {r["frames"]: r for r in result["runs"] if r["variant"] == "old"}
    print(f"\n{result['device']}, {args.preset}, {args.height}x{args.width}, chunk {args.chunk_size}, "
          f"{'compiled bf16 fast path' if cuda else 'float32'}, depth head, GPU cache {args.gpu_cache_gb} GiB, "
          f"host budget {args.host_budget_gb} GiB; every first run from an empty pinned cache\n")
    print("| N | store | first run s | frames/s | warm s | peak GPU GiB | pinned GiB | pinning s | new/old first "
          "| new/old warm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["runs"]:
        o = old.get(r["frames"]) if r["variant"] == "new" else None
        first = r["first_s"] / o["first_s"] if o else None
        warm = r["warm_s"] / o["warm_s"] if o and r.get("warm_s") and o.get("warm_s") else None
        print(f"| {r['frames']} | {r['variant']} | {fmt(r['first_s'])} | {fmt(r['frames_per_s'], '{:.0f}')} | "
              f"{fmt(r.get('warm_s'))} | {fmt(r['peak_gib'], '{:.1f}')} | {fmt(r['pinned_gib'], '{:.1f}')} | "
              f"{fmt(r['pinning_s'])} | {fmt(first, '{:.3f}')} | {fmt(warm, '{:.3f}')} |")
    for r in result["runs"]:
        if r["variant"] == "new" and r["frames"] in README_OLD:
            kind, seconds = README_OLD[r["frames"]]
            ours = r.get("warm_s") if kind == "warm" else r["first_s"]
            if ours:
                print(f"{r['frames']} frames, new {kind} {ours:.2f} s against the README's previous store "
                      f"{seconds} s ({README_NOTES[r['frames']]}): {ours / seconds:.3f}")
    ahead = {r["frames"]: r for r in result["runs"] if r["variant"] == "new"}
    for r in result["runs"]:
        if r["variant"] == "on-demand" and r["frames"] in ahead:
            a = ahead[r["frames"]]["first_s"]
            print(f"{r['frames']} frames, first run pinning ahead (new) {a:.2f} s against pinning on demand "
                  f"{r['first_s']:.2f} s: {a / r['first_s']:.3f}")
    save()
    return result


if __name__ == "__main__":
    main()
