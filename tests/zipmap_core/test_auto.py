"""`engine: auto`: the decisions, and the memory model against the README's GPU measurements."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zipmap_core import EngineConfig, ModelConfig, ZipMap, reconstruct
from zipmap_core.engines.auto import (
    COMPILE_PAYBACK_FRAMES,
    Accelerator,
    GiB,
    chunked_peak_bytes,
    offline_peak_bytes,
    resolve_engine,
)
from zipmap_core.engines.precision import cast_for_inference

HW = (392, 518)  # the README's measurements
IMAGE_BYTES = 3 * HW[0] * HW[1] * 4  # bench/fastpath.py keeps every input frame on the GPU
H200 = Accelerator("cuda", int(139.8 * GiB))
H100 = Accelerator("cuda", int(79.1 * GiB))
CPU = Accelerator("cpu", 16 * GiB)


def meta(preset: str) -> ZipMap:
    with torch.device("meta"):
        return ZipMap(ModelConfig.preset(preset))


@pytest.fixture(scope="module")
def full() -> ZipMap:
    return meta("offline_affine")


FAST = EngineConfig(dtype="bfloat16", fast=True, compile=True)
AUTOCAST = EngineConfig(dtype="bfloat16", fast=False, compile=False)

# (engine, frames, measured peak GiB, input frames on the GPU) from the README's tables: the
# fast-path table (`bench/fastpath.py --compile`: both dense heads, chunks of 64, 8 GiB GPU cache,
# images on the GPU) and the long-sequence table (`bench/engines.py`: depth head only, 6 GiB cache)
README_PEAKS = (
    [(FAST.model_copy(update={"mode": "offline", "local_points": True}), n, gib, True)
     for n, gib in [(50, 7.9), (100, 11.6), (250, 19.7), (500, 35.1), (750, 50.6)]]
    + [(AUTOCAST.model_copy(update={"mode": "offline", "local_points": True}), n, gib, True)
       for n, gib in [(50, 14.0), (100, 15.9), (250, 23.9), (500, 41.8), (750, 59.7)]]
    + [(FAST.model_copy(update={"mode": "offline"}), 750, 50.3, True)]
    + [(FAST.model_copy(update={"mode": "chunked", "local_points": True, "gpu_cache_gb": 8.0}), n, gib, True)
       for n, gib in [(50, 8.1), (100, 9.3), (250, 11.4), (500, 14.7), (750, 17.8)]]
    + [(FAST.model_copy(update={"mode": "chunked", "gpu_cache_gb": 6.0}), n, gib, False)
       for n, gib in [(750, 13.3), (2000, 14.0), (5000, 14.0), (10000, 13.5)]]
)


@pytest.mark.parametrize("engine, frames, measured_gib, images_on_gpu", README_PEAKS)
def test_memory_model_matches_the_measured_peaks(full, engine, frames, measured_gib, images_on_gpu):
    """Within -5% .. +15% of every measured point: never much below (offline would be chosen and
    run out of memory), at most a little above (chunked, 4% slower, chosen a little early)."""
    peak = offline_peak_bytes if engine.mode == "offline" else chunked_peak_bytes
    predicted = peak(full, engine, frames, HW)
    if images_on_gpu and engine.mode == "chunked":  # the offline engine moves them itself: fitted
        predicted += frames * IMAGE_BYTES
    predicted_gib = predicted / GiB
    assert 0.95 <= predicted_gib / measured_gib <= 1.15, (engine.mode, frames, predicted_gib, measured_gib)


def test_cuda_defaults_to_the_fast_path_offline_while_it_fits(full):
    engine = resolve_engine(EngineConfig(), full, 750, HW, H200)
    assert engine.settings() == {
        "mode": "offline", "dtype": "bfloat16", "fast": True, "compile": False,
        "newton_schulz": "bfloat16", "local_points": False,
    }
    # offline grows about 62 MiB a frame at 392x518: an H200 holds about 1940 frames, an H100 1030
    assert resolve_engine(EngineConfig(), full, 1900, HW, H200).mode == "offline"
    assert resolve_engine(EngineConfig(), full, 2000, HW, H200).mode == "chunked"
    assert resolve_engine(EngineConfig(), full, 1000, HW, H100).mode == "offline"
    assert resolve_engine(EngineConfig(), full, 1100, HW, H100).mode == "chunked"
    # the chunked engine's memory stays flat: 10000 frames fit where 2000 offline do not
    chunked = resolve_engine(EngineConfig(), full, 10000, HW, H200)
    assert chunked.mode == "chunked" and chunked_peak_bytes(full, chunked, 10000, HW) < 16 * GiB


def test_compilation_needs_a_run_long_enough_to_pay_it_back(full):
    assert resolve_engine(EngineConfig(), full, 2000, HW, H200).compile is False
    assert resolve_engine(EngineConfig(), full, 2000, HW, H200, run_frames=COMPILE_PAYBACK_FRAMES).compile is True
    assert resolve_engine(EngineConfig(), full, COMPILE_PAYBACK_FRAMES, HW, H200).compile is True
    assert resolve_engine(EngineConfig(), full, 50, HW, CPU, run_frames=10**6).compile is False  # CUDA only


def test_cpu_defaults_to_float32(full):
    engine = resolve_engine(EngineConfig(), full, 20, HW, CPU)
    assert (engine.mode, engine.dtype, engine.fast, engine.compile) == ("offline", "float32", False, False)
    assert resolve_engine(EngineConfig(), full, 1000, HW, CPU).mode == "chunked"  # 16 GiB of RAM
    assert resolve_engine(EngineConfig(fast=True), full, 20, HW, CPU).dtype == "bfloat16"


def test_explicit_settings_win(full):
    long = {"run_frames": 10**6}
    assert resolve_engine(EngineConfig(mode="offline"), full, 5000, HW, H200).mode == "offline"
    assert resolve_engine(EngineConfig(mode="chunked", chunk_size=8), full, 10, HW, H200).chunk_size == 8
    exact = resolve_engine(EngineConfig(dtype="float32"), full, 10, HW, H200, **long)
    assert (exact.dtype, exact.fast, exact.compile) == ("float32", False, False)
    autocast = resolve_engine(EngineConfig(fast=False), full, 10, HW, H200, **long)
    assert (autocast.dtype, autocast.fast, autocast.compile) == ("bfloat16", False, False)
    assert resolve_engine(EngineConfig(compile=False), full, 10, HW, H200, **long).compile is False
    assert resolve_engine(EngineConfig(compile=True), full, 10, HW, CPU).fast is True
    assert resolve_engine(EngineConfig(newton_schulz="float32"), full, 10, HW, H200).newton_schulz == "float32"


def test_gpus_without_bfloat16_get_float16(full):
    old = Accelerator("cuda", 32 * GiB, bf16=False)
    assert resolve_engine(EngineConfig(), full, 10, HW, old).dtype == "float16"


def test_streaming_models_stream_with_the_released_window():
    engine = resolve_engine(EngineConfig(), meta("streaming"), 300, HW, H200)
    assert (engine.mode, engine.window, engine.newton_schulz) == ("streaming", 1, "bfloat16")
    assert resolve_engine(EngineConfig(window=4), meta("streaming"), 300, HW, H200).window == 4


def test_attention_models_run_offline_however_long():
    assert resolve_engine(EngineConfig(), meta("demo_attention"), 10**5, (168, 224), CPU).mode == "offline"


def test_a_cast_model_keeps_its_fast_path():
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    cast_for_inference(model, "bfloat16")
    engine = resolve_engine(EngineConfig(), model, 3, (56, 84), CPU)
    assert (engine.dtype, engine.fast) == ("bfloat16", True)


def test_reconstruct_resolves_auto_on_this_machine():
    """The default engine on a CPU is the exact float32 offline engine (released Newton-Schulz)."""
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    images = torch.rand(3, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    default = list(reconstruct(model, images))
    explicit = list(reconstruct(model, images, EngineConfig(mode="offline", dtype="float32", fast=False)))
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.extrinsic, b.extrinsic)
    assert Accelerator.of("cpu").memory_bytes > 0
