"""FP8 trunk linears (`EngineConfig(fp8=True)`) against the bf16 fast path and float32.

    python bench/fp8.py --frames 750 --json /tmp/fp8.json

One process, in this order (the JSON is written after each step):
1. Random full-size `offline_affine`, input [N, 3, 392, 518] on the GPU, offline engine, depth
   head: float32 (strict, no TF32) once, its outputs the reference; then the model is cast for the
   fast path and runs bf16 and FP8 (eager: the same engine but for the linear layers; FP8's
   activation quantisation is compiled, a few seconds in the unmeasured run), each the median of
   --repeats runs after one unmeasured run; with --compile also both compiled. Depth and camera
   errors of each against float32 (bench/fastpath.py's `errors`), and FP8's against bf16.
2. The trained demo model (bundled demo_ttt) on the synthetic demo scene: the same errors for bf16
   autocast, the bf16 fast path and FP8, against float32 on the same device.
3. GEMMs alone, on the trunk's shapes (--gemm-tokens tokens, 1024 -> 4096 and 4096 -> 1024): bf16
   `F.linear`; FP8 `torch._scaled_mm` on operands quantised beforehand; FP8 with the activations'
   row-wise quantisation included, eager and compiled (the engine's `quantize_activations`: what
   it pays per layer).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, also when loaded by a test
from fastpath import arrays, errors  # noqa: E402
from timing import gpu_time, run  # noqa: E402

from zipmap_core import EngineConfig, ModelConfig, ZipMap, load_checkpoint, reconstruct  # noqa: E402
from zipmap_core.assets import demo_checkpoint_path  # noqa: E402
from zipmap_core.engines.fp8 import quantize_activations, quantize_rows, scaled_matmul  # noqa: E402
from zipmap_core.synthetic import generate_sequence  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def gemm_times(tokens: int, device: str) -> dict:
    """Seconds per GEMM on the trunk's MLP shapes: bf16, FP8 alone, FP8 with quantisation."""
    out = {}
    timer = gpu_time if device == "cuda" else cpu_time
    for k, n in ((1024, 4096), (4096, 1024)):
        x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5
        bias = torch.zeros(n, device=device, dtype=torch.bfloat16)
        wq, ws = quantize_rows(w)
        ws = ws.reshape(1, -1)
        xq, xs = quantize_rows(x)
        row = {
            "bf16_s": timer(lambda x=x, w=w, bias=bias: F.linear(x, w, bias)),
            "fp8_gemm_only_s": timer(
                lambda xq=xq, xs=xs, wq=wq, ws=ws, bias=bias: scaled_matmul(xq, xs, wq, ws, bias, torch.bfloat16)),
            "fp8_with_quantisation_s": timer(
                lambda x=x, wq=wq, ws=ws, bias=bias: scaled_matmul(*quantize_rows(x), wq, ws, bias, torch.bfloat16)),
            "fp8_with_compiled_quantisation_s": timer(
                lambda x=x, wq=wq, ws=ws, bias=bias: scaled_matmul(
                    *quantize_activations(x), wq, ws, bias, torch.bfloat16)),
        }
        row["tflops_bf16"] = 2 * tokens * k * n / row["bf16_s"] / 1e12
        row["tflops_fp8_gemm_only"] = 2 * tokens * k * n / row["fp8_gemm_only_s"] / 1e12
        out[f"{k}->{n}"] = row
        log(f"GEMM {tokens}x{k} -> {n}: {row}")
    return out


def cpu_time(fn) -> float:
    """Seconds of one call after a warm-up (CPU smoke runs)."""
    fn()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(model, images, engine, repeats: int, device: str) -> tuple[dict, dict]:
    """(timing, host arrays of the last run)."""
    run(model, images, engine, device=device)  # unmeasured: first-shape kernel choices, compilation
    runs = [run(model, images, engine, keep=True, device=device) for _ in range(repeats)]
    timing = {"time_s": statistics.median(r[0] for r in runs), "peak_gib": max((r[1] or 0) for r in runs)}
    timing["frames_per_s"] = images.shape[0] / timing["time_s"]
    return timing, arrays(runs[-1][2])


def full_size(args) -> dict:
    device = args.device
    torch.manual_seed(0)
    with torch.device(device):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    images = torch.rand(args.frames, 3, args.height, args.width, device=device)
    out: dict = {"timings": {}, "errors_vs_float32": {}}
    try:
        t, _, frames = run(model, images, EngineConfig(mode="offline", dtype="float32"), keep=True, device=device)
        out["timings"]["float32"] = {"time_s": t, "frames_per_s": args.frames / t, "runs": 1}
    except torch.OutOfMemoryError:  # the same result, layer by layer over chunks
        gc.collect()
        torch.cuda.empty_cache()
        engine = EngineConfig(mode="chunked", dtype="float32", chunk_size=64, gpu_cache_gb=0)
        t, _, frames = run(model, images, engine, keep=True, device=device)
        out["timings"]["float32"] = {"time_s": t, "frames_per_s": args.frames / t, "runs": 1, "engine": "chunked"}
    reference = arrays(frames)
    del frames
    log(f"float32: {out['timings']['float32']}")
    variants = {"bf16": {}, "fp8": {"fp8": True}}
    if args.compile:
        variants.update({"bf16_compiled": {"compile": True}, "fp8_compiled": {"fp8": True, "compile": True}})
    results = {}
    for name, extra in variants.items():
        engine = EngineConfig(mode="offline", dtype="bfloat16", fast=True, **{"compile": False, **extra})
        try:
            out["timings"][name], results[name] = timed(model, images, engine, args.repeats, device)
        except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
            out["timings"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{name}: FAILED {type(exc).__name__}: {exc}")
            continue
        out["errors_vs_float32"][name] = errors(results[name], reference)
        log(f"{name}: {out['timings'][name]} errors vs float32 {out['errors_vs_float32'][name]}")
    if "bf16" in results and "fp8" in results:
        out["fp8_vs_bf16"] = errors(results["fp8"], results["bf16"])
    return out


def trained_demo(device: str) -> dict:
    model = load_checkpoint(ZipMap(ModelConfig.preset("demo_ttt")), demo_checkpoint_path("demo_ttt")).eval().to(device)
    seq = generate_sequence(3, num_frames=6, height=112, width=154)
    scene = (seq.images.permute(0, 3, 1, 2).float() / 255.0).to(device)
    network = {"cameras": "network"}  # the network's own outputs under each precision
    reference = arrays(list(reconstruct(model, scene, EngineConfig(mode="offline", dtype="float32", **network),
                                        device=device)))
    autocast = EngineConfig(mode="offline", dtype="bfloat16", fast=False, **network)
    out = {"autocast_bf16": errors(arrays(list(reconstruct(model, scene, autocast, device=device))), reference)}
    fast_model = copy.deepcopy(model)
    for name, extra in {"bf16": {}, "fp8": {"fp8": True}}.items():
        engine = EngineConfig(mode="offline", dtype="bfloat16", fast=True, compile=False, **network, **extra)
        out[name] = errors(arrays(list(reconstruct(fast_model, scene, engine, device=device))), reference)
    log(f"trained demo model, errors vs float32: {json.dumps(out, indent=1)}")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, default=750)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gemm-tokens", type=int, default=64 * 1041, help="rows of the GEMM benchmark")
    ap.add_argument("--compile", action="store_true", help="also bf16 and FP8 compiled (about 60 s each to compile)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    results: dict = {"args": vars(args), "device": torch.cuda.get_device_name() if cuda else "cpu"}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    results["full_size"] = full_size(args)  # first: the table the issue asks for
    save()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    results["trained_demo"] = trained_demo(args.device)
    save()
    results["gemm"] = gemm_times(args.gemm_tokens, args.device)
    save()

    full = results["full_size"]
    base = full["timings"].get("bf16", {}).get("time_s")
    log(f"\n{results['device']}, {args.preset} with random weights, {args.frames} frames {args.height}x{args.width}, "
        f"offline engine, depth head, median of {args.repeats} (float32: 1 run)\n")
    log("| variant | time s | frames/s | vs bf16 time | depth max (of max) | depth median | translation (of max) "
        "| rotation deg | focal (of max) |")
    log("|---|---|---|---|---|---|---|---|---|")
    for name, t in full["timings"].items():
        if "error" in t:
            log(f"| {name} | failed: {t['error'][:80]} | | | | | | | |")
            continue
        e = full["errors_vs_float32"].get(name)
        errs = "| - | - | - | - | -" if e is None else (
            f"| {e['depth']:.2e} | {e['depth_median_pixel']:.2e} | {e['translation']:.2e} | {e['rotation_deg']:.3f} "
            f"| {e['focal']:.2e}")
        ratio = f"{t['time_s'] / base:.3f}" if base else "-"
        log(f"| {name} | {t['time_s']:.2f} | {t['frames_per_s']:.1f} | {ratio} {errs} |")
    log("\nTrained demo model (demo_ttt, 6 frames 112x154), errors vs float32 on the same device:\n")
    log("| variant | depth max (of max) | depth median | translation (of max) | rotation deg | focal (of max) |")
    log("|---|---|---|---|---|---|")
    for name, e in results["trained_demo"].items():
        log(f"| {name} | {e['depth']:.2e} | {e['depth_median_pixel']:.2e} | {e['translation']:.2e} | "
            f"{e['rotation_deg']:.3f} | {e['focal']:.2e} |")
    log(f"\nGEMMs alone, {args.gemm_tokens} rows (CUDA: median of 3 timings by CUDA events):")
    for shape, row in results["gemm"].items():
        log(f"  {shape}: bf16 {row['bf16_s'] * 1e3:.3f} ms, fp8 GEMM {row['fp8_gemm_only_s'] * 1e3:.3f} ms, "
            f"+ quantisation {row['fp8_with_quantisation_s'] * 1e3:.3f} ms (compiled "
            f"{row['fp8_with_compiled_quantisation_s'] * 1e3:.3f} ms)")
    save()
    return results


if __name__ == "__main__":
    main()
