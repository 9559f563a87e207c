"""Presets: every one is a valid config, and derived presets differ from their base only where meant."""

import pytest

from zipmap_core.config import PRESETS, ModelConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_and_is_named_after_its_key(name):
    cfg = ModelConfig.preset(name)
    assert cfg.name == name
    # derived presets are built with model_copy (no validation): re-validating must change nothing
    assert ModelConfig.model_validate(cfg.model_dump()) == cfg


@pytest.mark.parametrize(
    "base, derived, changed",
    [
        ("reference_dev", "reference_dev_streaming", {"name", "camera_head", "streaming_window"}),
        ("demo_ttt", "demo_attention", {"name", "global_block"}),
    ],
)
def test_derived_presets_differ_only_where_meant(base, derived, changed):
    a, b = ModelConfig.preset(base).model_dump(), ModelConfig.preset(derived).model_dump()
    assert {k for k in a if a[k] != b[k]} == changed


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match="demo_ttt"):
        ModelConfig.preset("nope")
