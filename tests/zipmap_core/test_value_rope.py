"""RoPE on the global blocks' values (issue #19): a value arrives rotated by where its token sits
relative to the query, so a block's output carries how far matched content moved."""

import numpy as np
import pytest
import torch

from zipmap_core.config import ModelConfig
from zipmap_core.engines import EngineConfig, reconstruct
from zipmap_core.layers.attention import Attention
from zipmap_core.layers.rope import RotaryPositionEmbedding2D, patch_positions
from zipmap_core.models.zipmap import ZipMap


def tiny(**update) -> ModelConfig:
    return ModelConfig.model_validate({**ModelConfig.preset("tiny").model_dump(), **update})


def uniform_attention_with_constant_values(value_rope: bool) -> tuple[Attention, torch.Tensor]:
    """One head that attends evenly (zero queries and keys) to values that are all `c` (bias only)."""
    rope = RotaryPositionEmbedding2D(100.0)
    attn = Attention(8, 1, rope=rope, value_rope=value_rope)
    c = torch.arange(1.0, 9.0)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.bias[16:] = c
        attn.proj.weight.copy_(torch.eye(8))
        attn.proj.bias.zero_()
    return attn, c


@pytest.mark.parametrize("offset", [(0, 0), (3, -2)])
def test_a_value_arrives_rotated_by_the_displacement_of_its_token(offset):
    attn, c = uniform_attention_with_constant_values(value_rope=True)
    pos = torch.tensor([[[2, 5], [4, 1]]]) + torch.tensor(offset)  # two tokens
    tables = attn.rope.tables(pos, 8)
    with torch.no_grad():
        out = attn(torch.randn(1, 2, 8), tables)[0]
    for i, j in ((0, 1), (1, 0)):
        moved = attn.rope(c.view(1, 1, 1, 8), attn.rope.tables((pos[:, j] - pos[:, i])[:, None], 8)).flatten()
        # even attention: half the token's own (unrotated) value, half the other one's rotated by p_j - p_i
        assert torch.allclose(out[i], (c + moved) / 2, atol=1e-5), (i, out[i], moved)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # opposite displacements read differently


def test_without_value_rope_the_output_is_blind_to_positions():
    attn, c = uniform_attention_with_constant_values(value_rope=False)
    tables = attn.rope.tables(patch_positions(1, 2, 3, 0), 8)
    with torch.no_grad():
        out = attn(torch.randn(1, 6, 8), tables)[0]
    assert torch.allclose(out, c.expand_as(out), atol=1e-5)


@pytest.mark.parametrize("block", ["ttt", "attention"])
def test_value_rope_adds_no_weights_and_changes_the_output(block):
    torch.manual_seed(0)
    plain = ZipMap(tiny(global_block=block)).eval()
    rotated = ZipMap(tiny(global_block=block, value_rope=True)).eval()
    assert plain.state_dict().keys() == rotated.state_dict().keys()
    rotated.load_state_dict(plain.state_dict(), strict=True)
    images = torch.rand(1, 3, 3, 56, 84, generator=torch.Generator().manual_seed(0))
    last = plain.config.depth - 1
    with torch.no_grad():
        a, b = plain.aggregator(images)[0][last], rotated.aggregator(images)[0][last]
    assert (a - b).norm() > 1e-3 * a.norm()


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_chunked_equals_offline_with_value_rope(chunk_size):
    torch.manual_seed(0)
    model = ZipMap(tiny(value_rope=True)).eval()
    images = torch.rand(5, 3, 56, 84, generator=torch.Generator().manual_seed(1))
    exact = {"newton_schulz": "float32", "local_points": True}
    offline = list(reconstruct(model, images, EngineConfig(**exact)))
    chunked = list(reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=chunk_size, **exact)))
    for field in ("extrinsic", "depth", "world_points"):
        a = np.stack([getattr(f, field) for f in offline])
        b = np.stack([getattr(f, field) for f in chunked])
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), field


def test_rendering_from_the_state_rotates_as_the_pass_did():
    """Query views answered in the pass and rendered later from its fast weights agree."""
    torch.manual_seed(0)
    model = ZipMap(tiny(value_rope=True, enable_nvs=True)).eval()
    images = torch.rand(1, 3, 3, 56, 84, generator=torch.Generator().manual_seed(2))
    rays = torch.randn(1, 2, 9, 56, 84, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        live = model(images, query_rays=rays)
        rendered = model.render(rays, live["states"])
    assert torch.allclose(live["nvs_pred"], rendered["nvs_pred"], atol=1e-5)


def test_value_rope_needs_rope_and_a_head_dim_divisible_by_four():
    with pytest.raises(ValueError, match="value_rope"):
        tiny(value_rope=True, rope_freq=0.0)
    with pytest.raises(ValueError, match="value_rope"):
        tiny(value_rope=True, global_block="attention", embed_dim=36, num_heads=6)
