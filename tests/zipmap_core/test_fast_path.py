"""The fast path (bf16 weights, channels-last heads, optional torch.compile) agrees with float32.

On a trained model (the bundled demo_ttt, on a rendered scene) the differences must stay at bf16
level; the GPU numbers for the full-size model are in bench/fastpath.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from zipmap_core import EngineConfig, ModelConfig, ZipMap, load_checkpoint, reconstruct
from zipmap_core.assets import demo_checkpoint_path
from zipmap_core.engines.precision import cast_for_inference, float32_parameters
from zipmap_core.layers.mlp import Mlp
from zipmap_core.synthetic import generate_sequence


def trained_demo() -> ZipMap:
    return load_checkpoint(ZipMap(ModelConfig.preset("demo_ttt")), demo_checkpoint_path("demo_ttt")).eval()


def demo_scene() -> torch.Tensor:
    seq = generate_sequence(3, num_frames=6, height=112, width=154)
    return seq.images.permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def trained() -> ZipMap:
    return trained_demo()


@pytest.fixture(scope="module")
def scene() -> torch.Tensor:
    return demo_scene()


def stacked(frames, field: str) -> np.ndarray:
    return np.stack([getattr(f, field) for f in frames])


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = (np.einsum("sij,sij->s", a[:, :, :3], b[:, :, :3]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))).max())


def errors(ours, ref) -> dict[str, float]:
    return {
        "depth": rel(stacked(ours, "depth"), stacked(ref, "depth")),
        "depth_median": float(np.median(np.abs(stacked(ours, "depth") / stacked(ref, "depth") - 1))),
        "depth_conf": rel(stacked(ours, "depth_conf"), stacked(ref, "depth_conf")),
        "local_points": rel(stacked(ours, "local_points"), stacked(ref, "local_points")),
        "translation": rel(stacked(ours, "extrinsic")[:, :, 3], stacked(ref, "extrinsic")[:, :, 3]),
        "rotation_deg": rotation_error_deg(stacked(ours, "extrinsic"), stacked(ref, "extrinsic")),
        "intrinsic": rel(stacked(ours, "intrinsic"), stacked(ref, "intrinsic")),
    }


@pytest.mark.parametrize("mode", ["offline", "chunked", "streaming"])
def test_fast_path_matches_float32_on_a_trained_model(trained, scene, mode):
    assert_fast_path_matches_float32(trained, scene, mode)


def assert_fast_path_matches_float32(trained: ZipMap, scene: torch.Tensor, mode: str) -> None:
    """Cameras as close to float32 as under plain bf16 autocast (the released code's precision);
    dense maps within bf16 rounding (the fast path runs the DPT heads in bf16, not float32). On
    the device `trained` is on (test_gpu.py runs it on CUDA).

    On CUDA the trunk's MLPs compute GELU's tanh form in the GEMM epilogue: a slightly different
    function, so cameras move by as much again as bf16 rounding does (measured on an H200 with
    bench/fastpath_ablation.py: up to 1.9x autocast's error, and with the exact GELU exactly
    autocast's). Both are checked: the exact-GELU fast path against autocast, the epilogue within
    twice autocast's error. The bf16 heads put the median depth error at 0.24% on a CPU and 0.57%
    on an H200 (one bf16 step is 0.39%)."""
    device = next(trained.parameters()).device
    # the network's own cameras: photometric ones ("auto" for this preset) would measure the alignment
    common = {"mode": mode, "chunk_size": 4, "window": 3, "local_points": True, "cameras": "network"}
    # explicit precisions: on CUDA "auto" would be the fast path, which casts `trained` in place
    ref = list(reconstruct(trained, scene, EngineConfig(dtype="float32", **common), device=device))
    plain_bf16 = EngineConfig(dtype="bfloat16", fast=False, **common)
    autocast = errors(list(reconstruct(trained, scene, plain_bf16, device=device)), ref)
    fast_engine = EngineConfig(dtype="bfloat16", fast=True, **common)
    fast_model = copy.deepcopy(trained)
    fast = errors(list(reconstruct(fast_model, scene, fast_engine, device=device)), ref)
    for module in fast_model.modules():
        if isinstance(module, Mlp):
            module.gelu_in_gemm = False
    exact_gelu = errors(list(reconstruct(fast_model, scene, fast_engine, device=device)), ref)
    assert fast_model.aggregator.frame_blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    # the epilogue's allowance above twice autocast's error: a focal error of 1% is still bf16 level
    # (2.5 bf16 steps); the 3527-step demo_ttt's streaming focal moves 0.38% under autocast and
    # 0.96% with the epilogue on an H200 (2026-12-01)
    floor = {"translation": 1e-3, "rotation_deg": 1e-3, "intrinsic": 1e-2}
    for key in ("translation", "rotation_deg", "intrinsic"):
        assert exact_gelu[key] <= 1.01 * autocast[key] + 1e-6, (key, exact_gelu, autocast)
        assert fast[key] <= 2 * autocast[key] + floor[key], (key, fast, autocast)
    assert fast["depth"] < 0.03 and fast["depth_median"] < 2**-7, fast  # bf16: 8 bits of mantissa
    assert fast["depth_conf"] < 0.03 and fast["local_points"] < 0.03, fast
    assert fast["depth"] > 0  # the fast path did not silently run float32


def test_fast_chunked_recomputing_head_inputs_equals_keeping_them(trained, scene):
    """The recompute path reruns the trunk per chunk after frames were already yielded."""
    model = copy.deepcopy(trained)
    common = dict(mode="chunked", chunk_size=4, dtype="bfloat16", fast=True)
    kept = list(reconstruct(model, scene, EngineConfig(head_inputs="keep", **common)))
    rerun = list(reconstruct(model, scene, EngineConfig(head_inputs="recompute", **common)))
    assert rel(stacked(rerun, "depth"), stacked(kept, "depth")) < 1e-2
    assert np.array_equal(stacked(rerun, "extrinsic"), stacked(kept, "extrinsic"))


@pytest.mark.parametrize("mode", ["offline", "chunked", "streaming"])
def test_autocast_does_not_leak_into_the_consumer(trained, scene, mode):
    """Engines are generators: the caller's code between frames must not run under their autocast."""
    engine = EngineConfig(mode=mode, dtype="bfloat16", chunk_size=4, window=3)
    for _ in reconstruct(trained, scene, engine):
        assert not torch.is_autocast_enabled("cpu")


def test_cast_keeps_the_precision_sensitive_parts_in_float32(trained):
    model = copy.deepcopy(trained)
    cast_for_inference(model, "bfloat16")
    keep = float32_parameters(model)
    assert set(model.pose_head.parameters()) <= keep
    ttt = model.aggregator.global_blocks[0].ttt_block
    assert {ttt.w0, ttt.w1, ttt.w2} <= keep
    heads = {p for head in model.dense_heads().values() for p in head.parameters()}
    assert {p for p in model.parameters() if p.dim() < 2} - heads <= keep
    assert model.aggregator.camera_token in keep
    for p in model.parameters():
        assert p.dtype == (torch.float32 if p in keep else torch.bfloat16)
    assert model.depth_head.channels_last
    # the trunk's MLPs take GELU into their first GEMM on CUDA; the float32 camera head does not
    assert model.aggregator.frame_blocks[0].mlp.gelu_in_gemm and model.aggregator.global_blocks[0].mlp.gelu_in_gemm
    assert not any(m.gelu_in_gemm for m in model.pose_head.modules() if isinstance(m, Mlp))
    assert model.depth_head.scratch.layer1_rn.weight.is_contiguous(memory_format=torch.channels_last)
    # idempotent, and the weights did not move
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cast_for_inference(model, "bfloat16")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_cast_model_refuses_another_fast_dtype(trained):
    model = copy.deepcopy(trained)
    cast_for_inference(model, "bfloat16")
    with pytest.raises(ValueError, match="already cast to torch.bfloat16"):
        cast_for_inference(model, "float16")


def test_a_cast_model_refuses_the_float32_engines(trained, scene):
    model = copy.deepcopy(trained)
    list(reconstruct(model, scene[:2], EngineConfig(dtype="bfloat16", fast=True)))
    with pytest.raises(ValueError, match="cast to torch.bfloat16 for the fast path"):
        list(reconstruct(model, scene[:2], EngineConfig(dtype="float32")))
    # left to "auto", a cast model keeps running the fast path it was cast for
    assert len(list(reconstruct(model, scene[:2], EngineConfig()))) == 2


def test_engine_config_rejects_inconsistent_fast_settings():
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        EngineConfig(fast=True, dtype="float32")
    with pytest.raises(ValueError, match="set fast=True"):
        EngineConfig(dtype="bfloat16", fast=False, compile=True)


@pytest.mark.slow
def test_compiled_fast_path_is_as_accurate_as_the_eager_one(trained, scene):
    """torch.compile fuses the elementwise work but computes the same function (CPU inductor)."""
    model = copy.deepcopy(trained)
    for mode in ("offline", "chunked"):
        common = {"mode": mode, "chunk_size": 4, "local_points": True, "cameras": "network"}
        ref = list(reconstruct(trained, scene, EngineConfig(**common)))
        autocast = errors(list(reconstruct(trained, scene, EngineConfig(dtype="bfloat16", **common))), ref)
        engine = EngineConfig(dtype="bfloat16", fast=True, compile=True, **common)
        compiled = errors(list(reconstruct(model, scene, engine)), ref)
        # fused kernels round differently (measured: translation 1.3% vs autocast's 0.7% of the
        # largest translation): bf16 level, not bit-equal to autocast. Intrinsics relative to
        # autocast's error too: the 3527-step demo_ttt's focal moves 1.9% (offline) and 3.0%
        # (chunked) under plain autocast, compiled 2.6% and 1.8% (CPU, 2026-12-01)
        limits = {
            "translation": max(3 * autocast["translation"], 0.03),
            "rotation_deg": 0.5,
            "intrinsic": max(2 * autocast["intrinsic"], 0.02),
        }
        for key, limit in limits.items():
            assert compiled[key] <= limit, (key, compiled, autocast)
        assert compiled["depth"] < 0.03 and compiled["depth_median"] < 0.005, compiled
    assert model._compiled_for_inference
