"""Streaming at the released setting: frames pushed one at a time, per-frame latency and frames/s.

    python bench/streaming_latency.py --frames 500 --json /tmp/streaming.json

One process, one model (the `streaming` preset, random full-size weights: window 1, MLP camera
head), input [N, 3, 392, 518] already on the GPU. Each variant opens a fresh stream
(`zipmap_core.open_stream`) and pushes the N frames one by one; a push returns that frame's
prediction on the host (cameras, depth, confidence), and the GPU is synchronised after every
push, so a latency is what a real-time caller waits for one frame. Median and p99 are over the
frames after the first `--settle` of each stream (those are listed separately: first-frame
kernels choices, and for the graphed variants the capture), frames/s = settled frames / their
summed latency. Variants, in this order (the first fast one casts the model in place for good):

- float32 (strict, no TF32; on --float32-frames frames only: it is slow), bf16 autocast (on
  --autocast-frames if given);
- fast: the bf16 fast path (bf16 weights, fused GEMM epilogues), eager;
- fast+graph: the same with each frame's forward pass captured once in a CUDA graph and
  replayed (`open_stream(..., cuda_graph=True)`: the shapes are static at window 1; the
  fast-weight state lives in the graph's input buffers, updated in place; off CUDA, for smoke
  runs, without the graph);
- compiled, compiled+graph: the same after torch.compile of the blocks (compilation timed).

Against it, in the same run, our offline engine's frames/s on the same N frames (bidirectional:
every frame sees every other, so it is not a streaming result, only the throughput reference),
fast path eager and compiled, median of --offline-repeats runs after one unmeasured run. Every
graphed variant's first --check-frames predictions are compared with its eager twin's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/timing.py, also when loaded by a test
from timing import run  # noqa: E402

from zipmap_core import EngineConfig, ModelConfig, ZipMap, open_stream  # noqa: E402
from zipmap_core.engines.streaming import StreamingSession  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def push_all(session: StreamingSession, images: torch.Tensor, sync) -> tuple[list[float], list]:
    """Latency of every push (seconds) and the predictions."""
    latencies, frames = [], []
    for frame in images:
        start = time.perf_counter()
        frames += session.push(frame)
        sync()
        latencies.append(time.perf_counter() - start)
    return latencies, frames


def summary(latencies: list[float], settle: int) -> dict:
    steady = np.asarray(latencies[settle:]) * 1e3
    return {
        "frames": len(latencies),
        "median_ms": float(np.median(steady)),
        "p99_ms": float(np.percentile(steady, 99)),
        "mean_ms": float(steady.mean()),
        "max_ms": float(steady.max()),
        "frames_per_s": float(len(steady) / steady.sum() * 1e3),
        "first_frames_ms": [round(x * 1e3, 2) for x in latencies[:settle]],
    }


def max_difference(a: list, b: list) -> dict:
    n = min(len(a), len(b))
    depth_a, depth_b = np.stack([f.depth for f in a[:n]]), np.stack([f.depth for f in b[:n]])
    ext_a, ext_b = np.stack([f.extrinsic for f in a[:n]]), np.stack([f.extrinsic for f in b[:n]])
    return {
        "frames": n,
        "depth_of_max": float(np.abs(depth_a - depth_b).max() / np.abs(depth_b).max()),
        "extrinsic_max_abs": float(np.abs(ext_a - ext_b).max()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="streaming")
    ap.add_argument("--window", type=int, help="override the preset's streaming window (the preset: 1)")
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--float32-frames", type=int, default=40, help="float32 pushes this many frames only")
    ap.add_argument("--autocast-frames", type=int, help="bf16 autocast pushes this many frames only (default: all)")
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--settle", type=int, default=3, help="first frames of each stream left out of the statistics")
    ap.add_argument("--check-frames", type=int, default=20)
    ap.add_argument("--variants", nargs="*", default=["float32", "autocast", "fast", "fast+graph", "compiled",
                                                       "compiled+graph"])
    ap.add_argument("--offline", nargs="*", default=["fast", "compiled"], help="offline references to time")
    ap.add_argument("--offline-repeats", type=int, default=2)
    ap.add_argument("--json", help="write the results here (after every variant)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(0)
    with torch.device(device):
        config = ModelConfig.preset(args.preset)
        if args.window:
            config = config.model_copy(update={"streaming_window": args.window})
        model = ZipMap(config).eval()
    images = torch.rand(args.frames, 3, args.height, args.width, device=device)
    results: dict = {"args": vars(args), "device": torch.cuda.get_device_name() if cuda else "cpu",
                     "streaming": {}, "offline": {}, "graph_vs_eager": {}}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    engines = {
        "float32": EngineConfig(dtype="float32"),
        "autocast": EngineConfig(dtype="bfloat16", fast=False),
        "fast": EngineConfig(dtype="bfloat16", fast=True, compile=False),
        "compiled": EngineConfig(dtype="bfloat16", fast=True, compile=True),
    }
    eager_frames: dict[str, list] = {}
    offline_done = False

    def time_offline(kind: str) -> None:
        engine = EngineConfig(mode="offline", dtype="bfloat16", fast=True, compile=kind == "compiled")
        start = time.perf_counter()
        run(model, images, engine, device=args.device)  # unmeasured: compilation, new shapes
        first = time.perf_counter() - start
        runs = [run(model, images, engine, device=args.device) for _ in range(args.offline_repeats)]
        t = statistics.median(r[0] for r in runs)
        results["offline"][kind] = {"time_s": t, "frames_per_s": args.frames / t, "first_run_s": first,
                                    "peak_gib": runs[0][1]}
        log(f"offline {kind}: {results['offline'][kind]}")
        save()

    for name in args.variants:
        base, graphed = name.split("+")[0], name.endswith("+graph")
        if base == "compiled" and "fast" in args.offline and not offline_done:
            time_offline("fast")  # eager offline before the model is compiled for good
            offline_done = True
        frames = images[: {"float32": args.float32_frames, "autocast": args.autocast_frames}.get(base)]
        start = time.perf_counter()
        try:
            warm = open_stream(model, engines[base], device=device, image_hw=(args.height, args.width))
            push_all(warm, frames[: args.settle + 2], sync)  # compilation, first-shape kernel choices
            warm_s = time.perf_counter() - start
            session = open_stream(model, engines[base], device=device, cuda_graph=graphed)
            latencies, predictions = push_all(session, frames, sync)
        except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the others still run
            results["streaming"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{name}: FAILED {type(exc).__name__}: {exc}")
            save()
            continue
        row = summary(latencies, args.settle)
        row["warm_up_s"] = warm_s
        if graphed:
            row["capture_s"] = session.capture_s
            results["graph_vs_eager"][name] = max_difference(predictions, eager_frames[base])
            log(f"{name} vs {base}: {results['graph_vs_eager'][name]}")
        else:
            eager_frames[base] = predictions[: args.check_frames]
        results["streaming"][name] = row
        log(f"{name}: {row}")
        save()
    if "fast" in args.offline and not offline_done:
        time_offline("fast")
    if "compiled" in args.offline:
        time_offline("compiled")

    offline = {k: v["frames_per_s"] for k, v in results["offline"].items()}
    best_offline = max(offline.values()) if offline else None
    log(f"\n{results['device']}, {args.preset} (window {model.config.streaming_window}), random weights, "
        f"{args.height}x{args.width}, {args.frames} frames pushed one at a time (float32: {args.float32_frames}, "
        f"autocast: {args.autocast_frames or args.frames}), "
        f"statistics after the first {args.settle} of each stream\n")
    log("| variant | median ms/frame | p99 ms/frame | frames/s | vs best offline frames/s |")
    log("|---|---|---|---|---|")
    for name, row in results["streaming"].items():
        if "error" in row:
            log(f"| {name} | failed: {row['error'][:80]} | | | |")
            continue
        ratio = f"{row['frames_per_s'] / best_offline:.3f}" if best_offline else "-"
        log(f"| {name} | {row['median_ms']:.2f} | {row['p99_ms']:.2f} | {row['frames_per_s']:.1f} | {ratio} |")
    for kind, fps in offline.items():
        label = "fast path compiled" if kind == "compiled" else "fast path"
        log(f"| offline engine, {label} ({args.frames} frames at once) | | | {fps:.1f} | "
            f"{fps / best_offline:.3f} |")
    save()
    return results


if __name__ == "__main__":
    main()
