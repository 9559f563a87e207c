"""Code paths that only run on CUDA, which CPU CI never reaches: `pytest -m gpu` on a GPU machine
(deselected without CUDA, see tests/conftest.py). Small models and tensors: a minute or two in all.

- the fast path's GELU in the GEMM epilogue (Mlp.gelu_in_gemm);
- strict float32 (no TF32) in the float32 engines;
- the chunked store's GPU cache and pinned-memory tiers (memory layouts kept), and the chunked
  engine through them, compiled without recompiling for the tier a frame comes from;
- the fast path's precision claim (test_fast_path.py's check, on CUDA);
- FP8 linears through torch._scaled_mm (row-wise scales), against their CPU computation;
- a window-1 stream replayed as a CUDA graph, against the same stream run eagerly;
- the frame-parallel engine on GPUs: 2 processes with NCCL on 2 GPUs, or 2 processes sharing
  one GPU through gloo where the machine has one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.zipmap_core.test_engines import EXACT, max_rel_error, tiny
from tests.zipmap_core.test_fast_path import assert_fast_path_matches_float32, demo_scene, trained_demo
from tests.zipmap_core.test_frame_parallel import (
    CASES,
    assert_shares_equal_one,
    five_frames,
    sensitive_tiny,
    share_worker,
)
from zipmap_core import EngineConfig, open_stream, reconstruct
from zipmap_core.engines.fp8 import Fp8Linear
from zipmap_core.engines.frame_parallel import spawn
from zipmap_core.engines.precision import autocast
from zipmap_core.engines.store import ActivationStore
from zipmap_core.layers.mlp import Mlp

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(900)]
CUDA = torch.device("cuda")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def test_gelu_in_the_gemm_epilogue_is_gelu_at_bf16_level():
    torch.manual_seed(0)
    exact = Mlp(256, 1024).to(CUDA)  # float32, erf GELU
    plain = copy.deepcopy(exact).to(torch.bfloat16)
    fused = copy.deepcopy(plain)
    fused.gelu_in_gemm = True
    x = torch.randn(4, 300, 256, device=CUDA)
    with torch.no_grad():
        want, got_plain, got_fused = exact(x), plain(x.bfloat16()), fused(x.bfloat16())
    assert not torch.equal(got_fused, got_plain)  # the epilogue (tanh GELU, fused rounding) really ran
    assert rel(got_fused, want) <= 2 * rel(got_plain, want) + 1e-3, (rel(got_fused, want), rel(got_plain, want))
    assert rel(got_fused, want) < 2e-2


def test_fp8_linear_on_cuda_is_its_cpu_computation_within_fast_accumulation():
    """torch._scaled_mm (e4m3 x e4m3, row-wise float32 scales, fast accumulation, bf16 out) on
    the trunk's shapes (1041 tokens of a 392x518 frame, 1024 -> 4096) against the same quantised
    products summed in float32 on the CPU. Hopper's fast FP8 accumulation is coarser than bf16
    rounding: 1.3% of the largest output on an H200 (2026-11-30); a wrong scale orientation,
    transpose or bias would be off by O(1)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 4096).to(torch.bfloat16)
    layer.__class__ = Fp8Linear
    layer.fp8 = True
    x = torch.randn(1041, 1024, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.quantize_weight()
        want = layer(x)
        layer.to(CUDA).quantize_weight()
        got = layer(x.to(CUDA))
    assert got.dtype == torch.bfloat16
    assert rel(got.cpu(), want) < 2e-2, rel(got.cpu(), want)


def test_cuda_graphed_stream_gives_the_eager_streams_predictions():
    """The bf16 fast path at window 1 (the released streaming setting), tiny model, 8 frames: the
    graph is captured at frame 2 and replayed from then on."""
    model = tiny(camera_head="mlp", streaming_window=1).to(CUDA)
    images = torch.rand(8, 3, 56, 84, device=CUDA, generator=torch.Generator(CUDA).manual_seed(0))
    engine = EngineConfig(dtype="bfloat16", fast=True, compile=False)
    eager = open_stream(model, engine)
    want = [f for frame in images for f in eager.push(frame)]
    graphed = open_stream(model, engine, cuda_graph=True)
    got = [f for frame in images for f in graphed.push(frame)]
    assert graphed.graph is not None
    assert [f.index for f in got] == list(range(8))
    for field, err in max_rel_error(want, got).items():
        assert err <= 1e-3, (field, err)


def test_float32_engines_run_without_tf32_and_restore_the_flags():
    torch.manual_seed(0)
    a, b = torch.randn(2, 512, 512, device=CUDA).unbind(0)
    image, kernel = torch.randn(1, 64, 32, 32, device=CUDA), torch.randn(64, 64, 3, 3, device=CUDA)
    exact_mm, exact_conv = a.double() @ b.double(), F.conv2d(image.double(), kernel.double())
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # a caller who enabled TF32
    try:
        with autocast(CUDA, "float32"):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
            strict_mm, strict_conv = a @ b, F.conv2d(image, kernel)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored
        loose_mm = a @ b
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert rel(strict_mm, exact_mm) < 1e-5 and rel(strict_conv, exact_conv) < 1e-5
    assert rel(loose_mm, exact_mm) > 1e-4  # TF32 (10-bit mantissa) would have been used


def test_store_tiers_on_cuda(tmp_path):
    mib = 2**20
    tensors = {key: torch.randn(256, 1024, device=CUDA) for key in ("gpu", "pinned", "file")}  # 1 MiB each
    tensors["pinned"] = torch.randn(4, 64, 32, 32, device=CUDA).to(memory_format=torch.channels_last)
    with ActivationStore(CUDA, budget_bytes=mib, scratch_dir=str(tmp_path), device_bytes=mib) as store:
        for key, t in tensors.items():
            store.put(key, t)
        assert (store.device_bytes, store.host_bytes, store.spilled_bytes) == (mib, mib, mib)
        assert store._host["pinned"][0].is_pinned()
        for key, t in tensors.items():
            back = store.get(key)
            assert back.device.type == "cuda" and torch.equal(back, t), key
            assert back.stride() == t.stride(), key  # a channels-last tensor comes back channels-last
        pinned = store._pool.pinned_bytes
        store.drop("pinned")
        again = 2 * tensors["pinned"]
        store.put("again", again)  # the freed pinned buffer is reused: no new pinning
        assert store._pool.pinned_bytes == pinned and torch.equal(store.fetch("again").wait(), again)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "tiers",
    [
        {"gpu_cache_gb": 6.0},  # everything in the GPU cache
        {"gpu_cache_gb": 0.0},  # pinned host memory, side-stream copies
        {"gpu_cache_gb": 0.0, "host_memory_budget_gb": 1e-5},  # scratch files
    ],
)
def test_chunked_on_cuda_is_exact_through_every_store_tier(tiers, tmp_path):
    model = sensitive_tiny().to(CUDA)
    images = five_frames()
    exact = {"dtype": "float32", "local_points": True, **EXACT}  # on CUDA "auto" would be the bf16 fast path
    offline = list(reconstruct(model, images, EngineConfig(mode="offline", **exact), device=CUDA))
    engine = EngineConfig(mode="chunked", chunk_size=2, scratch_dir=str(tmp_path), **exact, **tiers)
    chunked = list(reconstruct(model, images, engine, device=CUDA))
    errors = max_rel_error(offline, chunked)
    assert max(errors.values()) <= 1e-4, errors


def test_compiled_chunked_heads_do_not_recompile_when_frames_come_from_pinned_memory():
    """A long sequence's first run recompiled the DPT decode five times (about 30 s at 10,000
    frames on an H200): its inputs came back from the pinned tier contiguous, not channels-last
    as they were computed and as the GPU cache keeps them."""
    model, images = tiny().to(CUDA), five_frames()
    fast = {"mode": "chunked", "chunk_size": 2, "dtype": "bfloat16", "fast": True, "compile": True}
    on_gpu = EngineConfig(gpu_cache_gb=6.0, **fast)
    for _ in range(2):  # compiles for every shape of this sequence
        want = list(reconstruct(model, images, on_gpu, device=CUDA))
    with torch.compiler.set_stance("fail_on_recompile"):
        got = list(reconstruct(model, images, EngineConfig(gpu_cache_gb=0.0, **fast), device=CUDA))
    errors = max_rel_error(want, got)
    assert max(errors.values()) == 0.0, errors


@pytest.mark.parametrize("mode", ["offline", "chunked", "streaming"])
def test_fast_path_matches_float32_on_cuda(mode):
    assert_fast_path_matches_float32(trained_demo().to(CUDA), demo_scene(), mode)


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_frame_parallel_on_gpus_equals_one_gpu(backend, tmp_path):
    """NCCL: one process per GPU (needs 2 GPUs); gloo: 2 processes, on one GPU if there is one."""
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs a GPU per process: this machine has one (the gloo case covers it)")
    model, images = sensitive_tiny(), five_frames()
    spawn(share_worker, 2, model, images, str(tmp_path), "cuda", backend=backend)
    model = model.to(CUDA)
    for case, engine in CASES.items():
        one = list(reconstruct(model, images, engine, device=CUDA))
        two = assert_shares_equal_one(one, tmp_path, case)
        assert np.isfinite(two[0].depth).all()
