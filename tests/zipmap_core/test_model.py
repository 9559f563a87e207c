"""Model-level behaviour that the reference data does not cover."""

from __future__ import annotations

import pytest
import torch

from zipmap_core.config import ModelConfig
from zipmap_core.heads.dpt_head import uv_position_embedding
from zipmap_core.layers.ttt import (
    FastWeightSwiGLU,
    TTTInputs,
    bidirectional_schedule,
    fast_weight_gradients,
    newton_schulz,
    token_sum,
)
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
    for w, sliced in zip(whole, ttt.gradients_in_slices(state, inputs, tokens_per_slice=4)):
        assert torch.allclose(w, sliced, atol=1e-5)
    out, new_state = ttt(x, bidirectional_schedule())
    assert out.shape == x.shape and new_state.w0.shape == (4, 8, 16)


def test_ttt_projection_is_its_layers_and_an_update_only_projection_leaves_out_the_queries():
    """`project` makes q, k, v and the learning rates in one GEMM (to_qkv and lr_fc share their
    input); without queries (the chunked engine's first pass) the GEMM leaves the query rows out.
    Both are the two layers applied separately, to float32 rounding (a GEMM of another width may
    sum in another order)."""
    torch.manual_seed(0)
    ttt = FastWeightSwiGLU(dim=16, head_dim=8)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        q, k, v = (ttt._heads(t) for t in torch.nn.functional.silu(ttt.to_qkv(x)).chunk(3, dim=-1))
        lr = torch.nn.functional.softplus(ttt.lr_fc(x) + ttt.base_lr_inv)
        expected = {
            "q": q / (q.norm(dim=-1, keepdim=True) + 1e-5),
            "k": k / (k.norm(dim=-1, keepdim=True) + 1e-5),
            "v": v,
            "lr": lr.reshape(2, 10, 3, 2).permute(0, 3, 1, 2).reshape(4, 10, 3),
        }
        full, update_only = ttt.project(x), ttt.project(x, queries=False)
        assert update_only.q is None
        for name, want in expected.items():
            torch.testing.assert_close(getattr(full, name), want, rtol=1e-6, atol=1e-7)
            if name != "q":
                torch.testing.assert_close(getattr(update_only, name), want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(full.q, ttt.query(x), rtol=1e-6, atol=1e-7)
        state = ttt.initial_state(2)
        for a, b in zip(ttt.gradients_in_slices(state, update_only, 4), ttt.gradients_in_slices(state, full, 4)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", [4096, 4098, 4099, 100])  # split in 4, in 2, not split (odd, short)
def test_token_sum_splits_the_reduction_without_changing_it(tokens):
    torch.manual_seed(0)
    a, b = torch.randn(2, tokens, 8, dtype=torch.float64), torch.randn(2, tokens, 5, dtype=torch.float64)
    expected = torch.einsum("btm,btn->bmn", a, b)
    got = token_sum(a.float(), b.float())
    assert got.dtype == torch.float32 and got.shape == (2, 8, 5)
    assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-4)


def test_fast_weight_gradients_against_autograd():
    """The hand-written gradients are those of the inner loss -sum_t <f(k_t), lr_t v_t>, with each
    fast weight's learning rate on its own term (descent directions: minus the gradient)."""
    torch.manual_seed(0)
    b, L, d, dh = 2, 40, 8, 16
    w0, w2 = torch.randn(b, d, dh, dtype=torch.float64), torch.randn(b, d, dh, dtype=torch.float64)
    w1 = torch.randn(b, dh, d, dtype=torch.float64)
    k, v = torch.randn(b, L, d, dtype=torch.float64), torch.randn(b, L, d, dtype=torch.float64)
    lr = torch.rand(b, L, 3, dtype=torch.float64)
    got = fast_weight_gradients(w0, w1, w2, k, v, lr)
    for i in range(3):
        weights = [x.clone().requires_grad_(j == i) for j, x in enumerate((w0, w1, w2))]
        out = (torch.nn.functional.silu(k @ weights[0]) * (k @ weights[2])) @ weights[1]
        loss = -((out * v).sum(-1) * lr[..., i]).sum()
        (grad,) = torch.autograd.grad(loss, weights[i])
        assert torch.allclose(got[i].double(), -grad, rtol=1e-5, atol=1e-5), f"w{i}"


def test_dpt_position_embedding_is_computed_once_per_size():
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    head = model.depth_head
    a = head._position_embedding(32, 12, 16, 16 / 12, torch.float32, torch.device("cpu"))
    assert torch.equal(a, uv_position_embedding(32, 12, 16, 16 / 12, "cpu"))
    assert head._position_embedding(32, 12, 16, 16 / 12, torch.float32, torch.device("cpu")) is a
    for w in range(20):  # many sizes: the cache stays bounded
        head._position_embedding(8, 4, w + 1, 1.0, torch.float32, torch.device("cpu"))
    assert len(head._pos_cache) <= 16


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


@pytest.mark.parametrize("ns_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("dim,head_dim", [(32, 16), (16, 16)])
def test_step_orthogonalises_each_matrix_as_alone(dim, head_dim, ns_dtype):
    """The batched Newton-Schulz of a step equals orthogonalising w0, w1, w2's gradients one by one."""
    torch.manual_seed(0)
    ttt = FastWeightSwiGLU(dim=dim, head_dim=head_dim)
    ttt.ns_dtype = ns_dtype
    state = ttt.initial_state(2)
    norms = state.column_norms()
    grads = tuple(torch.randn_like(w) for w in (state.w0, state.w1, state.w2))
    new = ttt.step(state, grads, norms)
    for w, g, n, got in zip((state.w0, state.w1, state.w2), grads, norms, (new.w0, new.w1, new.w2)):
        alone = w + newton_schulz(g, ttt.muon_steps, ns_dtype).to(w.dtype)
        alone = alone / (alone.norm(dim=1, keepdim=True) + 1e-5) * n
        assert torch.allclose(got, alone, atol=1e-6)


def test_rejects_bad_image_shapes():
    model = ZipMap(ModelConfig.preset("tiny")).eval()
    with pytest.raises(ValueError, match="expected images"):
        model(torch.rand(2, 4, 28, 28))
