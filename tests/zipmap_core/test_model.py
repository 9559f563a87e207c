"""Model-level behaviour that the reference data does not cover."""

from __future__ import annotations

import pytest
import torch

from zipmap_core.config import ModelConfig
from zipmap_core.layers.ttt import FastWeightSwiGLU, TTTInputs, bidirectional_schedule, newton_schulz
from zipmap_core.models.zipmap import ZipMap


def test_presets_and_validation():
    assert {"offline_ref_view", "offline_affine", "streaming", "tiny"} <= set(ModelConfig.preset_names())
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("nope")
    with pytest.raises(ValueError, match="dpt.layers"):
        ModelConfig.preset("tiny").model_validate({**ModelConfig.preset("tiny").model_dump(), "depth": 2})


def test_global_attention_baseline_runs():
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny").model_copy(update={"global_block": "attention"})).eval()
    assert not any("ttt_block" in k for k in model.state_dict())
    with torch.inference_mode():
        out = model(torch.rand(3, 3, 28, 42))
    assert out["pose_enc"].shape == (1, 3, 9) and out["depth"].shape == (1, 3, 28, 42, 1)
    assert out["local_points"].shape == (1, 3, 28, 42, 3)


def test_reference_view_token_only_for_frame_zero():
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny")).eval()  # not affine invariant
    with torch.no_grad():
        model.aggregator.camera_token[0, 0].fill_(1.0)
        model.aggregator.camera_token[0, 1].fill_(-1.0)
        tokens = model.aggregator.embed(torch.rand(1, 3, 3, 28, 28))
        assert (tokens[0, 0, 0] == 1).all() and (tokens[0, 1:, 0] == -1).all()
        later = model.aggregator.embed(torch.rand(1, 2, 3, 28, 28), first_frame=5)
        assert (later[0, :, 0] == -1).all()


def test_ttt_gradient_is_a_sum_over_tokens():
    """What the chunked engine relies on: update(a ++ b) == step(grad(a) + grad(b))."""
    torch.manual_seed(0)
    ttt = FastWeightSwiGLU(dim=16, head_dim=8)
    x = torch.randn(2, 10, 16)
    inputs = ttt.project(x)
    state = ttt.initial_state(2)
    whole = ttt.gradients(state, inputs)
    parts = [ttt.gradients(state, TTTInputs(*(t[:, s] for t in inputs))) for s in (slice(0, 4), slice(4, 10))]
    for w, a, b in zip(whole, *parts):
        assert torch.allclose(w, a + b, atol=1e-5)
    out, new_state = ttt(x, bidirectional_schedule())
    assert out.shape == x.shape and new_state.w0.shape == (4, 8, 16)


def test_newton_schulz_orthogonalises():
    g = torch.randn(3, 32, 64)
    x = newton_schulz(g, steps=5)
    s = torch.linalg.svdvals(x)
    assert s.min() > 0.5 and s.max() < 1.5  # the quintic iteration lands near 1, not exactly
    tall = newton_schulz(g.transpose(1, 2), steps=5)
    assert torch.allclose(tall, x.transpose(1, 2), atol=1e-6)


def test_weight_norm_keeps_column_norms():
    torch.manual_seed(0)
    ttt = FastWeightSwiGLU(dim=16, head_dim=16)
    state = ttt.initial_state(1)
    norms = state.column_norms()
    grads = tuple(torch.randn_like(w) for w in (state.w0, state.w1, state.w2))
    new = ttt.step(state, grads, norms)
    for w, n in zip((new.w0, new.w1, new.w2), norms):
        assert torch.allclose(w.norm(dim=1, keepdim=True), n, rtol=1e-4)


def test_rejects_bad_image_shapes():
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match="expected images"):
        model(torch.rand(2, 4, 28, 28))
