"""Where the fast path's GPU time goes, and what its kernels achieve against the chip.

    python bench/fastpath_profile.py --frames 100 --compile

1. per stage of one offline forward pass (CUDA events around each stage, same model code as the
   engine): patch embedding, frame blocks, global blocks (project + gradients, orthogonalised
   step, read + output + MLP half), camera head, dense heads, copies to the host;
2. per kernel family, from torch.profiler over one engine run (GEMM, convolution, attention,
   fused Triton kernels by the ops they fuse, copies);
3. kernel rates at the trunk's shapes: each linear layer's GEMM, frame attention per SDPA
   backend, and the TTT gradient products, in TFLOP/s or GB/s.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
import torch.nn.functional as F
from timing import gpu_time, run  # bench/timing.py (this script's folder is on sys.path)
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from zipmap_core import EngineConfig, ModelConfig, ZipMap
from zipmap_core.engines.compiled import compile_for_inference
from zipmap_core.engines.precision import autocast, cast_for_inference, set_newton_schulz_precision
from zipmap_core.layers.ttt import TTTInputs, fast_weight_gradients


class StageClock:
    """Accumulates GPU time per named stage from CUDA event pairs (read once at the end)."""

    def __init__(self):
        self.pairs: dict[str, list] = defaultdict(list)

    def __call__(self, name: str, fn, *args):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(*args)
        end.record()
        self.pairs[name].append((start, end))
        return out

    def seconds(self) -> dict[str, float]:
        torch.cuda.synchronize()
        return {k: sum(a.elapsed_time(b) for a, b in v) / 1e3 for k, v in self.pairs.items()}


@torch.inference_mode()
def stage_times(model: ZipMap, images: torch.Tensor, local_points: bool) -> dict[str, float]:
    """One offline forward pass, stage by stage (the engine's code path, without the engine)."""
    agg, clock = model.aggregator, StageClock()
    x = images.unsqueeze(0)
    hw = tuple(images.shape[-2:])
    with autocast(images.device, "bfloat16"):
        tokens = clock("embed", agg.embed, x)
        pos = agg.rope_tables(hw, images.device)
        B, S, P, C = tokens.shape
        keep, layers = set(agg.output_layers()), {}
        for i in range(agg.cfg.depth):
            frame_out = clock("frame blocks", agg.frame_block, i, tokens, pos)
            block = agg.global_blocks[i]
            ttt = block.ttt_block
            flat = frame_out.reshape(B, S * P, C)
            xn = clock("global: norm + project", block.mixer_input, flat)
            inputs = clock("global: norm + project", ttt.project, xn)
            state = ttt.initial_state(B)
            norms = state.column_norms()
            grads = clock("global: gradients", ttt.gradients_in_slices, state, inputs)
            state = clock("global: orthogonalised step", ttt.step, state, grads, norms)
            o = clock("global: read + output", ttt.read, state, inputs.q)
            mixed = clock("global: read + output", ttt.output, o, xn)
            tokens = clock("global: finish (MLP half)", block.finish, flat, mixed).reshape(B, S, P, C)
            if i in keep:
                layers[i] = torch.cat([frame_out, tokens], dim=-1)
        pose = clock("camera head", model.predict_cameras, layers[agg.cfg.depth - 1])
        dense = clock("dense heads", lambda: model.predict_dense(layers, hw, local_points=local_points))
    outputs = (pose, *dense.values())
    pinned = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in outputs]  # as the engines copy
    clock("copies to host", lambda: [h.copy_(t, non_blocking=True) for h, t in zip(pinned, outputs)])
    out = clock.seconds()
    out["total"] = sum(out.values())
    return out


def cuda_kernels(prof) -> list:
    """The profiled CUDA kernels that took time, longest first."""
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    return sorted(events, key=lambda e: -e.self_device_time_total)


@torch.inference_mode()
def stage_kernels(model: ZipMap, images: torch.Tensor, top: int = 8) -> None:
    """The kernels of each stage of layer 0 (one call each, after a warm-up call)."""
    agg = model.aggregator
    hw = tuple(images.shape[-2:])
    with autocast(images.device, "bfloat16"):
        tokens = agg.embed(images.unsqueeze(0))
        pos = agg.rope_tables(hw, images.device)
        B, S, P, C = tokens.shape
        block = agg.global_blocks[0]
        ttt = block.ttt_block
        flat = tokens.reshape(B, S * P, C)
        xn = block.mixer_input(flat)
        inputs = ttt.project(xn)
        state = ttt.initial_state(B)
        norms = state.column_norms()
        grads = ttt.gradients_in_slices(state, inputs)
        trained = ttt.step(state, grads, norms)
        o = ttt.read(trained, inputs.q)
        mixed = ttt.output(o, xn)
        layers = {i: torch.cat([tokens, tokens], dim=-1) for i in model.config.dpt.layers}
        stages = {
            "DINO block": lambda: agg.patch_embed.blocks[0](tokens.reshape(S, P, C)),
            "frame block": lambda: agg.frame_block(0, tokens, pos),
            "global norm1": lambda: block.mixer_input(flat),
            "global project": lambda: ttt.project(xn),
            "global gradients": lambda: ttt.gradients_in_slices(state, inputs),
            "global step": lambda: ttt.step(state, grads, norms),
            "global read": lambda: ttt.read(trained, inputs.q),
            "global output": lambda: ttt.output(o, xn),
            "global finish": lambda: block.finish(flat, mixed),
            "camera head": lambda: model.predict_cameras(torch.cat([tokens, tokens], dim=-1)),
            "dense heads (16 frames)": lambda: model.predict_dense(
                {i: t[:, :16] for i, t in layers.items()}, hw, 16, True
            ),
        }
        for name, fn in stages.items():
            fn()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            events = cuda_kernels(prof)
            total = sum(e.self_device_time_total for e in events)
            print(f"\n{name}: {total / 1e3:.2f} ms in {sum(e.count for e in events)} kernels")
            for e in events[:top]:
                print(f"  {e.self_device_time_total / 1e3:7.3f} ms x{e.count:<4d} {e.key[:120]}")


FAMILIES = [
    ("copy", r"memcpy|memset"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("convolution", r"conv|fprop|dgrad|implicit|winograd|cudnn"),
    ("gemm", r"gemm|nvjet|cutlass|cublas|xmma|matmul"),
    ("triton: norm", r"^triton.*(layer_norm|rms_norm|var_mean|norm)"),
    ("triton: other fused", r"^triton"),
    ("aten: elementwise", r"elementwise|vectorized|unrolled"),
    ("aten: reduce", r"reduce"),
    ("aten: cat / copy / index", r"cat|copy|index|gather|scatter"),
    ("aten: upsample", r"upsample|interp"),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, pattern in FAMILIES:
        if re.search(pattern, low):
            return fam
    return "other"


def kernel_families(model, images, engine, top: int = 30) -> None:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(model, images, engine)
    events = cuda_kernels(prof)
    total = sum(e.self_device_time_total for e in events)
    by_family: dict[str, float] = defaultdict(float)
    for e in events:
        by_family[family(e.key)] += e.self_device_time_total
    print(f"\nkernel time by family ({total / 1e6:.3f} s of GPU time):")
    for fam, t in sorted(by_family.items(), key=lambda kv: -kv[1]):
        print(f"  {fam:28s} {t / 1e6:8.3f} s  {t / total:6.1%}")
    print(f"\ntop {top} kernels:")
    for e in events[:top]:
        name = e.key if len(e.key) < 110 else e.key[:107] + "..."
        print(f"  {e.self_device_time_total / 1e6:7.3f} s {e.self_device_time_total / total:6.1%} x{e.count:<6d} "
              f"[{family(e.key)}] {name}")


def find_kernel(model, images, engine, pattern: str, top: int = 12) -> None:
    """Which operators launch the kernels whose names match `pattern`: the launching op, its input
    shapes, its enclosing ops and the innermost Python frames of the model code."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True,
                 with_stack=True) as prof:
        run(model, images, engine)
    sites: dict[tuple, list] = defaultdict(lambda: [0, 0.0])
    for op in prof.events():
        hits = [k for k in op.kernels if re.search(pattern, k.name)]
        # operators only: the profiler also hangs kernels on its own buffer events
        if not hits or not ("::" in op.name or op.name.startswith("triton")):
            continue
        parents, p = [], op.cpu_parent
        while p is not None and len(parents) < 3:
            parents.append(p.name)
            p = p.cpu_parent
        frames = [f for f in (op.stack or []) if "zipmap_core" in f or "torchinductor" in f][:3]
        key = (op.name, str(op.input_shapes)[:160], " < ".join(parents), " | ".join(frames))
        sites[key][0] += len(hits)
        sites[key][1] += sum(k.duration for k in hits)
    print(f"\nkernels matching {pattern!r}, by launching op:")
    for (name, shapes, parents, frames), (count, us) in sorted(sites.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"  {us / 1e3:8.2f} ms x{count:<5d} {name} {shapes}\n      in: {parents}\n      at: {frames}")


@torch.inference_mode()
def kernel_rates(model: ZipMap, frames: int, tokens_per_frame: int) -> None:
    """TFLOP/s of the trunk's kernels on their real shapes and weights (under autocast, as in the
    engine: the fast path keeps biases in float32)."""
    with torch.autocast("cuda", torch.bfloat16):
        _kernel_rates(model, frames, tokens_per_frame)


def _kernel_rates(model: ZipMap, frames: int, tokens_per_frame: int) -> None:
    dev, bf = "cuda", torch.bfloat16
    M = frames * tokens_per_frame
    block = model.aggregator.frame_blocks[0]
    x = torch.randn(M, 1024, device=dev, dtype=bf)
    h = torch.randn(M, 4096, device=dev, dtype=bf)
    print(f"\nkernel rates, {frames} frames ({M} tokens):")
    for name, lin, inp in (
        ("qkv 1024->3072", block.attn.qkv, x), ("proj 1024->1024", block.attn.proj, x),
        ("fc1 1024->4096", block.mlp.fc1, x), ("fc2 4096->1024", block.mlp.fc2, h),
    ):
        t = gpu_time(lambda lin=lin, inp=inp: F.linear(inp, lin.weight, lin.bias))
        rate = 2 * M * lin.in_features * lin.out_features / t / 1e12
        print(f"  linear {name:18s} {rate:6.0f} TFLOP/s  {t * 1e3:7.2f} ms")
    fc1_gelu = torch.compile(lambda inp: F.gelu(F.linear(inp, block.mlp.fc1.weight, block.mlp.fc1.bias)))
    t = gpu_time(lambda: fc1_gelu(x))
    print(f"  linear fc1 + GELU, compiled   {2 * M * 1024 * 4096 / t / 1e12:6.0f} TFLOP/s  {t * 1e3:7.2f} ms")
    q = torch.randn(frames, 16, tokens_per_frame, 64, device=dev, dtype=bf)
    flops = 4 * frames * 16 * tokens_per_frame**2 * 64
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(backend):
                t = gpu_time(lambda: F.scaled_dot_product_attention(q, q, q))
            print(f"  attention {backend.name:22s} {flops / t / 1e12:6.0f} TFLOP/s  {t * 1e3:7.2f} ms")
        except RuntimeError as err:
            print(f"  attention {backend.name:22s} unavailable: {str(err)[:80]}")
    ttt = model.aggregator.global_blocks[0].ttt_block
    state = ttt.initial_state(1)
    hd, L = ttt.head_dim, M
    k = F.normalize(torch.randn(ttt.num_heads, L, hd, device=dev, dtype=bf), dim=-1)
    inputs = TTTInputs(k, k, torch.randn_like(k), torch.rand(ttt.num_heads, L, 3, device=dev))
    hidden = state.w0.shape[-1]
    flops = 2 * ttt.num_heads * L * hd * hidden * 6
    for name, fn in (("eager", fast_weight_gradients), ("compiled", torch.compile(fast_weight_gradients))):
        t = gpu_time(lambda fn=fn: fn(state.w0, state.w1, state.w2, *inputs[1:]))
        print(f"  TTT gradients {name:9s} {flops / t / 1e12:6.0f} TFLOP/s  {t * 1e3:7.2f} ms")
    big = torch.randn(ttt.num_heads, hd, L, device=dev, dtype=bf)
    small = torch.randn(ttt.num_heads, L, hidden, device=dev, dtype=bf)
    t = gpu_time(lambda: big @ small)
    print(f"  TTT bmm [h,{hd},L]@[h,L,{hidden}]  {2 * ttt.num_heads * L * hd * hidden / t / 1e12:6.0f} TFLOP/s  "
          f"{t * 1e3:7.2f} ms")
    t = gpu_time(lambda: k @ state.w0.to(bf))
    print(f"  TTT bmm [h,L,{hd}]@[h,{hd},{hidden}]  {2 * ttt.num_heads * L * hd * hidden / t / 1e12:6.0f} TFLOP/s  "
          f"{t * 1e3:7.2f} ms, {(k.numel() + small.numel()) * 2 / t / 1e9:.0f} GB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--local-points", action="store_true", help="run the local-point head too (as released)")
    ap.add_argument("--stage-kernels", action="store_true", help="only list the kernels of each stage of layer 0")
    ap.add_argument("--find-kernel", metavar="REGEX", help="also list the ops that launch the kernels matching REGEX")
    ap.add_argument("--modes", nargs="+", default=["offline"], choices=["offline", "chunked"],
                    help="engine modes whose runs are timed and profiled by kernel family")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--families-only", action="store_true", help="skip the stage times and kernel rates")
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    cast_for_inference(model, "bfloat16")
    set_newton_schulz_precision(model, "bfloat16")
    engines = {
        mode: EngineConfig(mode=mode, dtype="bfloat16", fast=True, compile=args.compile, local_points=args.local_points,
                           chunk_size=args.chunk_size, gpu_cache_gb=8.0, host_memory_budget_gb=48.0)
        for mode in args.modes
    }
    images = torch.rand(args.frames, 3, args.height, args.width, device="cuda")
    if args.compile:
        compile_for_inference(model)
        for engine in engines.values():
            run(model, images[:4], engine)
    print(torch.__version__, torch.cuda.get_device_name())
    if args.stage_kernels:
        stage_kernels(model, images)
        return
    for mode, engine in engines.items():
        seconds = [round(run(model, images, engine)[0], 3) for _ in range(2)]
        print(f"\n{mode} engine run, {args.frames} frames: {seconds} s")
        kernel_families(model, images, engine)
    engine = next(iter(engines.values()))
    if args.find_kernel:
        find_kernel(model, images, engine, args.find_kernel)
    if args.families_only:
        return
    stage_times(model, images, args.local_points)
    times = stage_times(model, images, args.local_points)
    print(f"\nstages of one offline pass, {args.frames} frames:")
    for name, t in times.items():
        print(f"  {name:32s} {t:7.3f} s  {t / times['total']:6.1%}")
    grid = (args.height // 14) * (args.width // 14)
    kernel_rates(model, args.frames, grid + model.config.patch_start_idx)


if __name__ == "__main__":
    main()
