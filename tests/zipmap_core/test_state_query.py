"""The state-query model against ../shared/reference: published layout, ray conditions, the dev
case's pass, stored state and rendered views; scene states saved, loaded and rendered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.zipmap_core.reference_data import REFERENCE_DIR, load_json
from tests.zipmap_core.test_reference import _filled, assert_matches
from zipmap_core.config import ModelConfig
from zipmap_core.engines.render import render_views
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.query_cameras import QueryCameras
from zipmap_core.rays import effective_intrinsics, ray_conditions
from zipmap_core.scene_state import SceneState

REFERENCE = "zipmap_reference_state_query.json"


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / "zipmap_reference_state_query.npz") as z:
        return {k: z[k] for k in z.files}


def test_full_size_layout_matches_the_published_checkpoint():
    with torch.device("meta"):
        model = ZipMap(ModelConfig.preset("state_query"))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    reference = load_json("zipmap_full_state_dict_state_query.json")
    assert ours == reference["state_dict"]
    assert list(ours) == list(reference["state_dict"])  # same order, too
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]


def test_dev_layout():
    with torch.device("meta"):
        model = ZipMap(ModelConfig.preset("reference_dev_state_query"))
    theirs = load_json(REFERENCE)["state_dict_state_query"]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == theirs and list(ours) == list(theirs)


def test_ray_conditions_match_the_released_builder(arrays):
    rays = ray_conditions(
        torch.from_numpy(arrays["query/extrinsic_c2w"]), torch.from_numpy(arrays["query/intrinsic"]), (140, 182)
    )
    assert_matches(rays, arrays["query/ray_cond"], "query/ray_cond")
    # off-centre principal points: the released builder rescales them (the quirk) before building rays
    c2w = torch.from_numpy(arrays["rays_offcentre/extrinsic_c2w"])
    K = torch.from_numpy(arrays["rays_offcentre/intrinsic"])
    assert_matches(effective_intrinsics(K, (28, 42)), arrays["rays_offcentre/intrinsic_effective"], "effective K")
    assert_matches(ray_conditions(c2w, K, (28, 42)), arrays["rays_offcentre/ray_cond"], "rays_offcentre/ray_cond")
    assert not torch.equal(effective_intrinsics(K, (28, 42)), K)  # the case does exercise the quirk


def reference_cameras(arrays) -> QueryCameras:
    return QueryCameras(
        torch.from_numpy(arrays["query/extrinsic_w2c"][0]), torch.from_numpy(arrays["query/intrinsic"][0]), (140, 182)
    )


@pytest.fixture(scope="module")
def dev_case(arrays):
    """The reference's case in one pass (the released training path): the dev model (weights from
    the fill rule) over its 4 frames, the 3 query views appended. Its input-frame outputs and fast
    weights are those of the plain `store_state` pass (they see only the input frames)."""
    model = _filled("reference_dev_state_query")  # Newton-Schulz in float32, as the reference
    images = torch.from_numpy(arrays["images"])
    with torch.inference_mode():
        out = model(images, query_rays=torch.from_numpy(arrays["query/ray_cond"]))
    state = SceneState.capture(model, out["states"], images.shape[-2:], images.shape[1])
    return model, images, out, state


@pytest.mark.slow
def test_dev_pass_and_its_state_match_the_reference(dev_case, arrays):
    _, _, out, state = dev_case
    for name in ("pose_enc", "depth", "depth_conf", "local_points"):
        assert_matches(out[name], arrays[f"forward/{name}"], f"forward/{name}")
    for name in ("pose_enc", "depth", "depth_conf", "nvs_pred", "nvs_depth_conf"):
        assert_matches(out[name], arrays[f"forward_query/{name}"], f"forward_query/{name}")
    assert len(state.layers) == 24 and state.shapes() == {"w0": [1, 384, 768], "w1": [1, 768, 384], "w2": [1, 384, 768]}
    for name in ("w0", "w1", "w2"):
        assert_matches(getattr(state.layers[0], name), arrays[f"state/layer00/{name}"], f"state/layer00/{name}")


@pytest.mark.slow
def test_rendering_from_the_state_matches_the_reference(dev_case, arrays):
    model, _, _, state = dev_case
    views = list(render_views(model, state, reference_cameras(arrays), batch_size=2))
    assert [v.index for v in views] == [0, 1, 2]
    rgbd = np.stack([np.concatenate([v.rgb, v.depth[..., None]], axis=-1) for v in views])[None]
    assert_matches(rgbd, arrays["render/nvs_pred"], "render/nvs_pred")
    assert_matches(np.stack([v.confidence for v in views])[None], arrays["render/nvs_depth_conf"], "nvs_depth_conf")


@pytest.mark.slow
def test_saved_state_renders_bit_for_bit_as_the_live_one(dev_case, arrays, tmp_path):
    model, _, _, state = dev_case
    size = state.save(tmp_path / "dev.safetensors")
    assert state.nbytes() == 24 * 3 * 384 * 768 * 4 < size < state.nbytes() + 16384  # fast weights + header
    assert state.save(tmp_path / "dev_bf16.safetensors", dtype="bfloat16") < size / 2 + 16384
    loaded = SceneState.load(tmp_path / "dev.safetensors")
    assert loaded.model == state.model and loaded.image_hw == (140, 182) and loaded.num_frames == 4
    cameras = reference_cameras(arrays)
    off_axis = QueryCameras(cameras.extrinsics[2:], cameras.intrinsics[2:], cameras.image_hw)
    (live,) = render_views(model, state, off_axis)
    (again,) = render_views(model, loaded, off_axis)
    for field in ("rgb", "depth", "confidence"):
        np.testing.assert_array_equal(getattr(live, field), getattr(again, field))
