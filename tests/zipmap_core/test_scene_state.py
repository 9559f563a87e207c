"""Scene states on the tiny state-query model: captured by the engines, saved and loaded through
fsspec, refused by other models, rendered in batches."""

from __future__ import annotations

from dataclasses import replace

import fsspec
import numpy as np
import pytest
import torch

from tests.zipmap_core.reference_data import assert_derived_camera_matches, filled_state_dict
from zipmap_core.checkpoint import save_checkpoint
from zipmap_core.config import ModelConfig
from zipmap_core.engines import EngineConfig, reconstruct
from zipmap_core.engines.render import render_views
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.query_cameras import QueryCameras, orbit
from zipmap_core.scene_state import SceneState, SceneStateError


def tiny(filled: bool = True, **overrides) -> ZipMap:
    """The tiny state-query model; `filled` with the reference's weight rule, under which (unlike
    the default initialisation's 0.01 layer scales) the rendered views depend on the state."""
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny_state_query").model_copy(update=overrides)).eval()
    if filled:
        model.load_state_dict(filled_state_dict(model))
    return model


@pytest.fixture(scope="module")
def images():
    return torch.rand(5, 3, 56, 84, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def scene(images):
    model = tiny()
    captured = []
    frames = list(reconstruct(model, images, on_state=captured.append))
    return model, captured[0], frames


def assert_states_equal(ours: SceneState, ref: SceneState, rel: float = 1e-5) -> None:
    assert ours.model == ref.model and len(ours.layers) == len(ref.layers)
    for i, (a, b) in enumerate(zip(ours.layers, ref.layers)):
        for name in ("w0", "w1", "w2"):
            x, y = getattr(a, name), getattr(b, name)
            err = (x - y).abs().max().item()
            assert err <= rel * y.abs().max().item(), f"layer {i} {name}: {err:.3g}"


def test_offline_capture_holds_the_trained_weights_and_cameras(scene, images):
    model, state, frames = scene
    assert len(state.layers) == 4 and state.shapes() == {"w0": [1, 32, 64], "w1": [1, 64, 32], "w2": [1, 32, 64]}
    assert state.image_hw == (56, 84) and state.num_frames == 5 and state.nbytes() == 4 * 3 * 32 * 64 * 4
    np.testing.assert_allclose(state.extrinsics.numpy(), np.stack([f.extrinsic for f in frames]), atol=1e-6)
    np.testing.assert_allclose(state.intrinsics.numpy(), np.stack([f.intrinsic for f in frames]), rtol=1e-6)
    with torch.inference_mode():
        states = model(images)["states"]
    for ours, ref in zip(state.layers, states):
        assert torch.equal(ours.w0, ref.w0) and torch.equal(ours.w2, ref.w2)
    initial = model.aggregator.global_blocks[0].ttt_block.w0
    assert (state.layers[0].w0 - initial).abs().max() > 1e-3  # trained, not the initial weights


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("chunk_size", [2, 5])
def test_chunked_engine_state_equals_offline_state(images, chunk_size, affine):
    model = tiny(affine_invariant=affine)
    offline, chunked = [], []
    exact = {"newton_schulz": "float32"}  # equal up to summation order; bf16 rounds the two differently
    list(reconstruct(model, images, EngineConfig(mode="offline", **exact), on_state=offline.append))
    chunked_engine = EngineConfig(mode="chunked", chunk_size=chunk_size, **exact)
    list(reconstruct(model, images, chunked_engine, on_state=chunked.append))
    assert len(chunked) == 1
    assert_states_equal(chunked[0], offline[0])
    assert_derived_camera_matches(chunked[0].extrinsics, offline[0].extrinsics.numpy(), "extrinsics")


def test_states_need_a_bidirectional_engine_and_a_ttt_model(images):
    with pytest.raises(ValueError, match="offline' or 'chunked"):
        reconstruct(tiny(), images, EngineConfig(mode="streaming", window=2), on_state=print)
    attention = ZipMap(ModelConfig.preset("tiny").model_copy(update={"global_block": "attention"}))
    with pytest.raises(ValueError, match="no fast weights"):
        reconstruct(attention, images, on_state=print)


@pytest.mark.parametrize("url", ["local", "memory://states/scene.safetensors"])
def test_save_and_load_through_fsspec(scene, tmp_path, url):
    _, state, _ = scene
    uri = str(tmp_path / "scene.safetensors") if url == "local" else url
    state.metadata["sequence_id"] = "alpha"
    size = state.save(uri)
    fs, path = fsspec.core.url_to_fs(uri)
    assert size == fs.size(path) > state.nbytes()
    loaded = SceneState.load(uri)
    assert loaded.model == state.model and loaded.metadata == {"sequence_id": "alpha"}
    assert (loaded.image_hw, loaded.num_frames, loaded.dtype) == ((56, 84), 5, torch.float32)
    assert torch.equal(loaded.extrinsics, state.extrinsics) and torch.equal(loaded.intrinsics, state.intrinsics)
    for a, b in zip(loaded.layers, state.layers):
        assert all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("w0", "w1", "w2"))
    half = state.save(uri, dtype="bfloat16")
    assert half < size and SceneState.load(uri).dtype == torch.bfloat16
    assert SceneState.load(uri).nbytes() == state.nbytes("bfloat16") == state.nbytes() // 2


def test_a_state_is_refused_by_other_models(scene):
    _, state, _ = scene
    cameras = QueryCameras(state.extrinsics[:1], state.intrinsics[:1], state.image_hw)
    with pytest.raises(SceneStateError, match="other weights"):
        list(render_views(tiny(filled=False), state, cameras))
    with pytest.raises(SceneStateError, match="another architecture"):
        list(render_views(tiny(depth=5), state, cameras))
    with pytest.raises(ValueError, match="cannot render novel views"):
        list(render_views(ZipMap(ModelConfig.preset("tiny")), state, cameras))


def test_unreadable_states_fail_clearly(scene, tmp_path):
    model, state, _ = scene
    with pytest.raises(FileNotFoundError, match="scene state not found"):
        SceneState.load(tmp_path / "missing.safetensors")
    save_checkpoint(model, tmp_path / "weights.safetensors")
    with pytest.raises(SceneStateError, match="not a scene state"):
        SceneState.load(tmp_path / "weights.safetensors")
    state.save(tmp_path / "cut.safetensors")
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SceneStateError, match="cannot read scene state"):
        SceneState.load(tmp_path / "cut.safetensors")


def test_views_come_from_the_state(scene):
    model, state, _ = scene
    cameras = QueryCameras(state.extrinsics[:2], state.intrinsics[:2], state.image_hw)
    untrained = replace(state, layers=[block.ttt_block.initial_state(1) for block in model.aggregator.global_blocks])
    trained, initial = list(render_views(model, state, cameras)), list(render_views(model, untrained, cameras))
    assert max(np.abs(a.rgb - b.rgb).max() for a, b in zip(trained, initial)) > 0.01
    assert max(np.abs(a.depth / b.depth - 1).max() for a, b in zip(trained, initial)) > 0.01


def test_rendering_does_not_depend_on_batching(scene):
    model, state, _ = scene
    cameras = orbit(state.extrinsics, state.intrinsics, (42, 56), 5, target_depth=1.0)
    one = list(render_views(model, state, cameras, batch_size=1))
    five = list(render_views(model, state, cameras, batch_size=5))
    assert [v.index for v in one] == list(range(5)) and one[0].rgb.shape == (42, 56, 3)
    for a, b in zip(one, five):
        np.testing.assert_allclose(a.rgb, b.rgb, atol=1e-6)
        np.testing.assert_allclose(a.depth, b.depth, rtol=1e-5)
    assert all(
        (v.rgb > 0).all() and (v.rgb < 1).all() and (v.depth > 0).all() and (v.confidence > 1).all() for v in one
    )


def test_rendering_under_bfloat16_autocast_stays_close(scene):
    model, state, _ = scene
    cameras = QueryCameras(state.extrinsics, state.intrinsics, state.image_hw)
    exact = list(render_views(model, state, cameras))
    rounded = list(render_views(model, state, cameras, dtype="bfloat16"))
    assert max(np.abs(a.rgb - b.rgb).max() for a, b in zip(exact, rounded)) < 0.05


def test_bad_render_sizes_are_rejected(scene):
    model, state, _ = scene
    with pytest.raises(ValueError, match="multiple of the patch size"):
        list(render_views(model, state, QueryCameras(state.extrinsics, state.intrinsics, (50, 84))))


def test_fast_path_model_renders_in_its_dtype(scene):
    import copy

    from zipmap_core.engines.precision import cast_for_inference, float32_parameters

    model, state, _ = scene
    fast = copy.deepcopy(model)
    cast_for_inference(fast, "bfloat16")
    assert fast.nvs_head.scratch.output_conv2[-1].weight in float32_parameters(fast)  # depth = exp(last conv)
    assert fast.nvs_head.projects[0].weight.dtype == torch.bfloat16 and fast.nvs_head.channels_last
    cameras = QueryCameras(state.extrinsics[:2], state.intrinsics[:2], state.image_hw)
    exact = list(render_views(model, state, cameras))
    rounded = list(render_views(fast, state, cameras, dtype="bfloat16"))
    assert max(np.abs(a.rgb - b.rgb).max() for a, b in zip(exact, rounded)) < 0.05
    with pytest.raises(ValueError, match="render with dtype='bfloat16'"):
        list(render_views(fast, state, cameras))
