"""The GPU fast path against our bf16-autocast path: precision, time, peak memory, MFU.

    python bench/fastpath.py --frames 50 100 250 500 750

One process, one model (full-size random weights, input [N, 3, 392, 518], both dense heads as in
the released benchmark unless --depth-only):
1. precision on --check-frames frames: the float32 engine is the reference; bf16 autocast (the
   released code's precision) and the fast path (offline and chunked) are compared with it;
2. time and peak GPU memory per N: baseline = our offline engine under bf16 autocast with float32
   weights (the released code's recipe); then the model is cast for the fast path, which runs
   offline and chunked;
3. MFU = FLOPs / time / 800 TFLOP/s, FLOPs counted by torch's FlopCounterMode on this workload;
4. where the eager fast path's time goes, stage by stage, at --breakdown-frames (and with
   --profile, the kernels of the best variant by family), from bench/fastpath_profile.py.
Images start on the GPU (as in the released benchmark); every frame's results reach the host.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np
import torch
from fastpath_profile import kernel_families, stage_times  # bench/ (this script's folder is on sys.path)
from timing import measure, run
from torch.utils.flop_counter import FlopCounterMode

from zipmap_core import EngineConfig, ModelConfig, ZipMap
from zipmap_core.engines.precision import cast_for_inference
from zipmap_core.layers.mlp import Mlp

PEAK_FLOPS = 800e12  # H100 SXM dense bf16, as in the issue


def log(msg: str) -> None:
    print(msg, flush=True)


def arrays(frames) -> dict[str, np.ndarray]:
    return {
        "depth": np.stack([f.depth for f in frames]),
        "conf": np.stack([f.depth_conf for f in frames]),
        "extrinsic": np.stack([f.extrinsic for f in frames]),
        "intrinsic": np.stack([f.intrinsic for f in frames]),
    }


def errors(ours: dict, ref: dict) -> dict[str, float]:
    """Max relative errors: |ours - ref| max over max |ref| (depth, confidence, translation,
    focal length), plus the largest rotation difference in degrees."""
    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    r_ours, r_ref = ours["extrinsic"][:, :, :3], ref["extrinsic"][:, :, :3]
    cos = (np.einsum("sij,sij->s", r_ours, r_ref) - 1) / 2
    return {
        "depth": rel(ours["depth"], ref["depth"]),
        "depth_median_pixel": float(np.median(np.abs(ours["depth"] - ref["depth"]) / np.abs(ref["depth"]))),
        "conf": rel(ours["conf"], ref["conf"]),
        "translation": rel(ours["extrinsic"][:, :, 3], ref["extrinsic"][:, :, 3]),
        "rotation_deg": float(np.degrees(np.arccos(np.clip(cos, -1, 1))).max()),
        "focal": rel(ours["intrinsic"][:, [0, 1], [0, 1]], ref["intrinsic"][:, [0, 1], [0, 1]]),
    }


def count_flops(model, height: int, width: int, local_points: bool) -> tuple[float, float]:
    """(FLOPs per frame, FLOPs per sequence) of one forward pass, from passes over 2 and 4 frames."""
    totals = {}
    for p in model.parameters():
        p.requires_grad_(False)  # the counter's module tracker hooks autograd otherwise
    # the counter knows no formula for the fused GEMM + GELU: count those MLPs unfused
    fused = [m for m in model.modules() if isinstance(m, Mlp) and m.gelu_in_gemm]
    for m in fused:
        m.gelu_in_gemm = False
    for n in (2, 4):
        images = torch.rand(1, n, 3, height, width, device="cuda")
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16), FlopCounterMode(display=False) as counter:
            model(images, local_points=local_points)
        totals[n] = counter.get_total_flops()
    for m in fused:
        m.gelu_in_gemm = True
    per_frame = (totals[4] - totals[2]) / 2
    return per_frame, totals[2] - 2 * per_frame


def time_variants(model, variants: dict, frames: list[int], timings: dict, H: int, W: int, repeats: int) -> None:
    for n in frames:
        images = torch.rand(n, 3, H, W, device="cuda")
        for name, engine in variants.items():
            run(model, images if engine.compile else images[:4], engine)  # compiled: every new shape first
            timings[n][name] = measure(model, images, engine, repeats)
            log(f"N={n} {name}: {timings[n][name]}")
        del images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, nargs="*", default=[50, 100, 250, 500, 750])
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--gpu-cache-gb", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--check-frames", type=int, default=16)
    ap.add_argument("--breakdown-frames", type=int, default=100)
    ap.add_argument("--depth-only", action="store_true", help="skip the local-point head (our engines' default)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--variants", nargs="*", default=["offline", "chunked"], help="fast engine modes to time")
    ap.add_argument("--profile", action="store_true", help="print the fast path's CUDA kernels by family")
    ap.add_argument("--compile", action="store_true", help="also time the fast path with torch.compile")
    ap.add_argument("--skip-eager", action="store_true", help="time the fast path only compiled (with --compile)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    lp = not args.depth_only
    base = EngineConfig(mode="offline", dtype="bfloat16", local_points=lp)
    fast = {
        "offline": EngineConfig(mode="offline", dtype="bfloat16", fast=True, local_points=lp),
        "chunked": EngineConfig(
            mode="chunked", dtype="bfloat16", fast=True, local_points=lp, chunk_size=args.chunk_size,
            gpu_cache_gb=args.gpu_cache_gb, host_memory_budget_gb=48.0,
        ),
    }
    fast = {mode: fast[mode] for mode in args.variants}
    H, W = args.height, args.width
    check = torch.rand(args.check_frames, 3, H, W, device="cuda")
    results: dict = {"args": vars(args), "device": torch.cuda.get_device_name()}

    # 1. precision (float32 reference, before the model is cast)
    ref = arrays(run(model, check, EngineConfig(mode="offline", local_points=lp), keep=True)[2])
    precision = {"autocast_bf16": errors(arrays(run(model, check, base, keep=True)[2]), ref)}

    # 2a. baseline timings
    timings: dict[int, dict] = {n: {} for n in args.frames}
    if not args.skip_baseline:
        run(model, check[:4], base)
        for n in args.frames:
            images = torch.rand(n, 3, H, W, device="cuda")
            timings[n]["baseline"] = measure(model, images, base, args.repeats)
            log(f"baseline N={n}: {timings[n]['baseline']}")
            del images
    gc.collect()
    torch.cuda.empty_cache()

    # the fast path, then the same compiled
    cast_for_inference(model, "bfloat16")
    for mode, engine in fast.items():
        precision[f"fast_{mode}"] = errors(arrays(run(model, check, engine, keep=True)[2]), ref)
    per_frame, per_seq = count_flops(model, H, W, lp)
    results["flops"] = {"per_frame": per_frame, "per_sequence": per_seq}
    log(f"FLOPs: {per_frame / 1e12:.3f} T per frame + {per_seq / 1e12:.3f} T per sequence")
    variants = {f"fast_{mode}": engine for mode, engine in fast.items()}
    if args.skip_eager and args.compile:
        variants = {}
    else:
        time_variants(model, variants, args.frames, timings, H, W, args.repeats)
        images = torch.rand(args.breakdown_frames, 3, H, W, device="cuda")
        results["breakdown"] = stage_times(model, images, lp)
        log(f"stages at N={args.breakdown_frames} (fast, eager): {results['breakdown']}")
        del images
    if args.compile:  # in place and for good: from here on every fast run is compiled
        compiled = {f"compiled_{mode}": engine.model_copy(update={"compile": True}) for mode, engine in fast.items()}
        start = time.perf_counter()
        for name, engine in compiled.items():  # two shapes each, so that dynamo makes the frame count dynamic
            run(model, check[:4], engine)
            precision[name] = errors(arrays(run(model, check, engine, keep=True)[2]), ref)
        results["compile_warmup_s"] = time.perf_counter() - start
        log(f"compilation and warm-up: {results['compile_warmup_s']:.0f} s")
        time_variants(model, compiled, args.frames, timings, H, W, args.repeats)
        variants.update(compiled)
    results["precision_vs_float32"] = precision
    results["timings"] = timings
    log(json.dumps(precision, indent=1))

    if args.profile:
        best = "compiled_chunked" if args.compile else "fast_chunked"
        log(f"{best}, {args.breakdown_frames} frames:")
        kernel_families(model, torch.rand(args.breakdown_frames, 3, H, W, device="cuda"), variants[best])

    names = list(variants)
    log("\n| N | baseline s (GiB) | " + " | ".join(f"{v} s (GiB)" for v in names) + " | best speed-up | best MFU |")
    log("|---|---|" + "---|" * len(names) + "---|---|")
    for n, row in timings.items():
        def cell(key, row=row):
            r = row.get(key)
            return "-" if not r or r["time_s"] is None else f"{r['time_s']:.2f} ({r['peak_gib']:.1f})"

        done = [row[v]["time_s"] for v in names if row.get(v) and row[v]["time_s"] is not None]
        b = row.get("baseline")
        speed = "-" if not b or b["time_s"] is None or not done else f"{b['time_s'] / min(done):.2f}x"
        mfu = "-" if not done else f"{(per_frame * n + per_seq) / min(done) / PEAK_FLOPS:.1%}"
        log(f"| {n} | {cell('baseline')} | " + " | ".join(cell(v) for v in names) + f" | {speed} | {mfu} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
