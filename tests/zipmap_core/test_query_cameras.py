"""Query cameras: the JSON form, orbits around the input cameras, paths through them."""

from __future__ import annotations

import json

import pytest
import torch

from zipmap_core.geometry import invert_rigid
from zipmap_core.query_cameras import QueryCameras, interpolate, look_at, orbit

K = torch.tensor([[100.0, 0.0, 42.0], [0.0, 100.0, 28.0], [0.0, 0.0, 1.0]])


def input_cameras() -> torch.Tensor:
    """Three cameras side by side looking down +z, the first at the origin (world-to-camera)."""
    centres = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.4, 0.05, 0.0]])
    return look_at(centres, torch.tensor([0.2, 0.0, 10.0]), torch.tensor([0.0, 1.0, 0.0]))


def test_json_round_trip_and_accepted_forms():
    cams = QueryCameras(input_cameras(), K.expand(3, 3, 3), (56, 84))
    data = json.loads(json.dumps(cams.to_dict()))
    back = QueryCameras.from_dict(data)
    assert back.image_hw == (56, 84) and torch.allclose(back.extrinsics, cams.extrinsics)
    flat = {"cameras": [{"extrinsic": torch.eye(4).reshape(-1).tolist(), "intrinsic": K.reshape(-1).tolist()}]}
    one = QueryCameras.from_dict(flat, default_hw=(28, 42))
    assert one.image_hw == (28, 42) and torch.equal(one.extrinsics[0], torch.eye(3, 4))


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "expected"),
        ({"height": 56, "width": 84, "cameras": [{"extrinsic": [[1, 0, 0]], "intrinsic": K.tolist()}]}, r"\[0\]"),
        ({"height": 56, "width": 84, "cameras": [{"intrinsic": K.tolist()}]}, r"cameras\[0\]: needs 'extrinsic'"),
        ({"height": 56, "cameras": [{"extrinsic": torch.eye(4).tolist(), "intrinsic": K.tolist()}]}, "both"),
        ({"cameras": [{"extrinsic": torch.eye(4).tolist(), "intrinsic": K.tolist()}]}, "no image size"),
    ],
)
def test_bad_camera_files_are_explained(data, message):
    with pytest.raises(ValueError, match=message):
        QueryCameras.from_dict(data)


def test_orbit_circles_the_mean_camera_and_looks_at_the_target():
    ext = input_cameras()
    cams = orbit(ext, K.expand(3, 3, 3), (56, 84), 8, target_depth=5.0, radius=0.3)
    assert len(cams) == 8
    c2w = invert_rigid(cams.extrinsics.double())
    mean_centre = invert_rigid(ext.double())[:, :, 3].mean(0)
    radii = (c2w[:, :, 3] - mean_centre).norm(dim=-1)
    assert torch.allclose(radii, torch.full_like(radii, 0.3), atol=1e-5)
    # the target projects to the principal point of every view
    forward = invert_rigid(ext.double())[:, :, 2].mean(0)
    target = mean_centre + 5.0 * forward / forward.norm()
    in_cam = cams.extrinsics.double()[:, :, :3] @ target + cams.extrinsics.double()[:, :, 3]
    pixels = in_cam[:, :2] / in_cam[:, 2:] * 100.0 + torch.tensor([42.0, 28.0], dtype=torch.float64)
    assert torch.allclose(pixels, torch.tensor([42.0, 28.0], dtype=torch.float64).expand(8, 2), atol=0.05)
    # the default radius is the cameras' spread around their mean
    spread = orbit(ext, K.expand(3, 3, 3), (56, 84), 4, target_depth=5.0)
    centres = invert_rigid(spread.extrinsics.double())[:, :, 3]
    assert (centres - mean_centre).norm(dim=-1).min() == pytest.approx(0.5, rel=0.2)


def test_interpolation_passes_through_every_input_camera():
    ext = input_cameras()
    intr = torch.stack([K, K * 1.1, K * 1.2])
    intr[:, 2, 2] = 1.0
    path = interpolate(ext, intr, (56, 84), steps=4)
    assert len(path) == 9
    assert torch.allclose(path.extrinsics[::4], ext, atol=1e-5)
    assert torch.allclose(path.intrinsics[::4], intr, atol=1e-4)
    mid = invert_rigid(path.extrinsics[2:3].double())[0, :, 3]
    assert torch.allclose(mid, torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        interpolate(ext, intr, (56, 84), steps=0)
