"""Our model against ../shared/reference: published layouts and the small model's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.zipmap_core.reference_data import assert_derived_camera_matches, filled_state_dict, load_arrays, load_json
from zipmap_core.config import ModelConfig
from zipmap_core.engines import StreamingSession
from zipmap_core.geometry import pose_encoding_to_cameras
from zipmap_core.layers.ttt import windowed_schedule
from zipmap_core.models.zipmap import ZipMap

DENSE = ("depth", "depth_conf", "local_points")


def assert_matches(ours: torch.Tensor | np.ndarray, ref: np.ndarray, name: str) -> None:
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else ours
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs reference {ref.shape}"
    err = np.abs(ours - ref).max()
    assert err <= 1e-4 * np.abs(ref).max(), f"{name}: max |ours - ref| = {err:.3g}, max |ref| = {np.abs(ref).max():.3g}"


@pytest.mark.parametrize(
    "preset, manifest",
    [
        ("offline_ref_view", "zipmap_full_state_dict_offline.json"),
        ("offline_affine", "zipmap_full_state_dict_offline.json"),
        ("streaming", "zipmap_full_state_dict_streaming.json"),
    ],
)
def test_full_size_layout_matches_published_checkpoints(preset, manifest):
    with torch.device("meta"):
        model = ZipMap(ModelConfig.preset(preset))
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    reference = load_json(manifest)
    theirs = reference["state_dict"]
    assert ours == theirs
    assert list(ours) == list(theirs)  # same order, too
    if reference["model"] == "offline":
        assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]


@pytest.mark.parametrize(
    "preset, manifest_key",
    [("reference_dev", "state_dict_offline"), ("reference_dev_streaming", "state_dict_streaming")],
)
def test_dev_layout(preset, manifest_key):
    with torch.device("meta"):
        model = ZipMap(ModelConfig.preset(preset))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == load_json("zipmap_reference_dev.json")[
        manifest_key
    ]


@pytest.fixture(scope="module")
def arrays():
    return load_arrays()


def _filled(preset: str) -> ZipMap:
    model = ZipMap(ModelConfig.preset(preset)).eval()
    model.load_state_dict(filled_state_dict(model), strict=True)
    return model


@pytest.mark.slow
def test_offline_matches_reference(arrays):
    images = torch.from_numpy(arrays["images"])
    with torch.inference_mode():
        out = _filled("reference_dev")(images)
    for name in ("pose_enc",) + DENSE:
        assert_matches(out[name], arrays[f"offline/{name}"], f"offline/{name}")
    extrinsics, intrinsics = pose_encoding_to_cameras(out["pose_enc"], images.shape[-2:])
    assert_derived_camera_matches(extrinsics, arrays["offline/extrinsic"], "offline/extrinsic")
    assert_derived_camera_matches(intrinsics, arrays["offline/intrinsic"], "offline/intrinsic")


@pytest.mark.slow
def test_streaming_matches_reference(arrays):
    images = torch.from_numpy(arrays["images"])
    model = _filled("reference_dev_streaming")
    window = load_json("zipmap_reference_dev.json")["config"]["window"]
    S, (H, W) = images.shape[1], images.shape[-2:]
    per_frame = model.config.patch_start_idx + (H // 14) * (W // 14)
    with torch.inference_mode():
        out = model(images, schedule=windowed_schedule(S * per_frame, window * per_frame))
    for name in ("pose_enc",) + DENSE:
        assert_matches(out[name], arrays[f"streaming/{name}"], f"streaming/{name}")

    # the same stream fed one window per call, the fast weights carried between calls
    session = StreamingSession(model, window, torch.device("cpu"))
    depth = torch.cat([session.feed(images[0, s : s + window])["depth"] for s in range(0, S, window)], dim=1)
    assert_matches(depth, arrays["streaming_chained/depth"], "streaming_chained/depth")
