"""FP8 trunk linears (`EngineConfig(fp8=True)`, engines/fp8.py): the quantisation, the plumbing,
and the error on the trained demo model. On the CPU the FP8 products are computed in float32
from the same e4m3 values and scales (the quantisation's error, not the kernel's); the CUDA kernel
(torch._scaled_mm) is checked against that in test_gpu.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.zipmap_core.test_fast_path import demo_scene, errors, stacked, trained_demo
from zipmap_core import EngineConfig, reconstruct
from zipmap_core.engines.fp8 import E4M3, E4M3_MAX, Fp8Linear, fp8_candidates, quantize_rows, set_fp8


def test_rows_are_quantised_to_e4m3_within_its_rounding():
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 64)[:, None]
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.shape == (64, 1) and scale.dtype == torch.float32
    back = q.float() * scale
    amax = x.abs().amax(dim=1, keepdim=True)
    assert torch.allclose(back.abs().amax(dim=1, keepdim=True), amax, rtol=1e-6)  # each row's max is exact
    # 3 mantissa bits: half a unit in the last place is 2^-4 of the value (normals), and the
    # subnormals' spacing 2^-9 of the scale below them
    assert ((back - x).abs() <= 2**-4 * x.abs() + 2**-9 * scale + 1e-12).all()
    assert float(q.float().abs().max()) == E4M3_MAX


def test_fp8_linear_is_the_product_of_the_quantised_operands():
    torch.manual_seed(0)
    layer = nn.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        plain = layer(x)
        layer.__class__ = Fp8Linear
        layer.fp8 = True
        layer.quantize_weight()
        got = layer(x)
        xq, xs = quantize_rows(x.reshape(-1, 64))
        wq, ws = quantize_rows(layer.weight)
        want = ((xq.float() * xs) @ (wq.float() * ws).t() + layer.bias.float()).to(torch.bfloat16).reshape(2, 5, 48)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert 0 < float((got.float() - plain.float()).abs().max() / plain.float().abs().max()) < 0.1


def test_engine_fp8_on_the_trained_demo_model_is_near_bf16_and_toggles_off_exactly():
    model = trained_demo()
    scene = demo_scene()
    keys = set(model.state_dict())
    common = {"mode": "offline", "local_points": True, "cameras": "network"}  # the network's own cameras
    ref = list(reconstruct(model, scene, EngineConfig(dtype="float32", **common)))
    fast_model = copy.deepcopy(model)
    bf16_engine = EngineConfig(dtype="bfloat16", fast=True, **common)
    bf16 = list(reconstruct(fast_model, scene, bf16_engine))
    fp8 = list(reconstruct(fast_model, scene, EngineConfig(fp8=True, **common)))  # auto: the bf16 fast path
    layers = fp8_candidates(fast_model)
    trunk = fast_model.aggregator
    covered = {trunk.frame_blocks[0].attn.qkv, trunk.frame_blocks[0].mlp.fc2, trunk.global_blocks[0].ttt_block.c_proj}
    assert covered <= set(layers)
    assert trunk.global_blocks[0].ttt_block.lr_fc not in layers  # 3 outputs: stays bf16
    assert all(isinstance(m, Fp8Linear) and m.fp8 for m in layers)
    assert set(fast_model.state_dict()) == keys  # same names: checkpoints still load strictly
    bf16_err, fp8_err = errors(bf16, ref), errors(fp8, ref)
    # measured on this CPU: depth median 0.24% (bf16 0.24%), translation 4.0% of the largest
    # (bf16 0.7%), rotation 0.23 deg (bf16 0.08), intrinsics 1.8% (bf16 1.0%)
    assert not np.array_equal(stacked(fp8, "depth"), stacked(bf16, "depth"))  # FP8 really ran
    assert fp8_err["depth_median"] < 0.01 and fp8_err["depth"] < 0.05, fp8_err
    assert fp8_err["translation"] < 0.1 and fp8_err["rotation_deg"] < 1.0 and fp8_err["intrinsic"] < 0.05, fp8_err
    assert bf16_err["translation"] < fp8_err["translation"]
    again = list(reconstruct(fast_model, scene, bf16_engine))  # fp8 off: the bf16 fast path again, bit for bit
    assert not any(m.fp8 for m in layers)
    for field in ("depth", "extrinsic", "intrinsic"):
        assert np.array_equal(stacked(again, field), stacked(bf16, field)), field


def test_fp8_needs_the_bf16_fast_path():
    with pytest.raises(ValueError, match="fp8=True runs on the bfloat16 fast path"):
        EngineConfig(fp8=True, fast=False)
    with pytest.raises(ValueError, match="fp8=True runs on the bfloat16 fast path"):
        EngineConfig(fp8=True, dtype="float16")
    assert EngineConfig(fp8=True).settings()["fp8"] is True
    assert "fp8" not in EngineConfig().settings()


def test_set_fp8_off_on_a_model_never_converted_changes_nothing():
    model = trained_demo()
    assert set_fp8(model, False) == 0
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())


def test_the_ttt_projections_go_through_the_fp8_layer_when_it_is_on():
    """The TTT mixer joins to_qkv's rows with lr_fc's in one GEMM when to_qkv is a plain linear
    layer; swapped for the FP8 one, the queries, keys and values (of both `project` and `query`)
    must come from its FP8 product."""
    from zipmap_core import ModelConfig, ZipMap

    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    ttt = model.aggregator.global_blocks[0].ttt_block
    x = torch.randn(1, 6, ttt.to_qkv.in_features)
    with torch.no_grad():
        set_fp8(model, True)
        assert isinstance(ttt.to_qkv, Fp8Linear)
        q, k, v = (ttt._heads(t) for t in torch.nn.functional.silu(ttt.to_qkv(x)).chunk(3, dim=-1))
        full, update_only = ttt.project(x), ttt.project(x, queries=False)
        torch.testing.assert_close(full.v, v, rtol=0, atol=0)
        torch.testing.assert_close(update_only.v, v, rtol=0, atol=0)
        torch.testing.assert_close(full.k, k / (k.norm(dim=-1, keepdim=True) + 1e-5), rtol=0, atol=0)
        torch.testing.assert_close(ttt.query(x), q / (q.norm(dim=-1, keepdim=True) + 1e-5), rtol=0, atol=0)
        set_fp8(model, False)
        torch.testing.assert_close(ttt.project(x).v, v.float(), rtol=0.2, atol=0.05)  # plain again: near, not equal
        assert not torch.equal(ttt.project(x).v, v.float())
