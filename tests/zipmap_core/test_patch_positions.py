"""Absolute patch positions for the conv patch embed (issue #19): without them no patch token of a
demo model knows where it is, so how far content moved between frames cannot be read off."""

import pytest
import torch

from zipmap_core.config import ModelConfig
from zipmap_core.layers.patch_embed import sincos_positions
from zipmap_core.models.zipmap import ZipMap


def tiny(**update) -> ModelConfig:
    return ModelConfig.model_validate({**ModelConfig.preset("tiny").model_dump(), **update})


def test_identical_patches_are_told_apart_only_with_patch_positions():
    image = torch.full((1, 1, 3, 56, 56), 0.5)  # every patch the same
    start = ModelConfig.preset("tiny").patch_start_idx
    torch.manual_seed(0)
    plain = ZipMap(tiny()).eval()
    torch.manual_seed(0)
    placed = ZipMap(tiny(patch_positions=True)).eval()
    with torch.no_grad():
        a = plain.aggregator.embed(image)[0, 0, start:]
        b = placed.aggregator.embed(image)[0, 0, start:]
    assert torch.allclose(a, a[:1].expand_as(a))
    assert (b - b[:1]).abs().amax(-1)[1:].min() > 0.01  # every patch differs from the first


def test_patch_positions_add_no_weights():
    plain, placed = ZipMap(tiny()), ZipMap(tiny(patch_positions=True))
    assert plain.state_dict().keys() == placed.state_dict().keys()
    placed.load_state_dict(plain.state_dict(), strict=True)


def test_the_code_is_centred_on_the_principal_point():
    code = sincos_positions(4, 6, 32).reshape(4, 6, 32)
    sin = torch.cat([code[..., 0:8], code[..., 16:24]], -1)
    cos = torch.cat([code[..., 8:16], code[..., 24:32]], -1)
    flipped = code.flip(0, 1)  # the patch mirrored through the image centre
    assert torch.allclose(torch.cat([flipped[..., 0:8], flipped[..., 16:24]], -1), -sin, atol=1e-6)
    assert torch.allclose(torch.cat([flipped[..., 8:16], flipped[..., 24:32]], -1), cos, atol=1e-6)
    # a centre crop keeps the code of the patches it keeps
    assert torch.allclose(sincos_positions(2, 6, 32).reshape(2, 6, 32), code[1:3], atol=1e-6)


def test_patch_positions_are_for_the_conv_patch_embed():
    with pytest.raises(ValueError, match="conv patch embed"):
        ModelConfig.model_validate({**ModelConfig.preset("reference_dev").model_dump(), "patch_positions": True})
