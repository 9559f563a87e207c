"""nerfstudio exports against nerfstudio's documented format and conventions (nerfstudio itself
does not install on CPU within reason: scripts/check_nerfstudio.py runs its own data parser on an
export where it is installed).

Convention (docs.nerf.studio, "Data conventions"): `transform_matrix` is camera-to-world with
OpenGL camera axes (+x right, +y up, looking down -z), and the ray of pixel (row, col) goes
through image coordinate (col + 0.5, row + 0.5).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.exports.encode import decode_depth

from ..conftest import parse_ply
from .ground_truth import HEIGHT, SCENES, WIDTH, ground_truth_run

POINTS = 3000


@pytest.fixture(scope="module")
def ns_run(tmp_path_factory):
    run_uri, frames = ground_truth_run(
        tmp_path_factory.mktemp("nerfstudio"), exports=f"[{{format: nerfstudio, points: {POINTS}}}]",
        report__enabled="false",
    )
    folders = {name: os.path.join(run_uri, "exports", "nerfstudio", name) for name in SCENES}
    docs = {name: json.load(open(os.path.join(folder, "transforms.json"))) for name, folder in folders.items()}
    return {"frames": frames, "folders": folders, "docs": docs}


def test_transforms_json_follows_the_documented_schema(ns_run):
    for name, doc in ns_run["docs"].items():
        folder, frames = ns_run["folders"][name], ns_run["frames"][name]
        assert doc["camera_model"] == "PINHOLE" and len(doc["frames"]) == len(frames)
        assert [f["file_path"] for f in doc["frames"]] == sorted(f["file_path"] for f in doc["frames"])
        for entry, frame in zip(doc["frames"], frames):
            c2w = np.array(entry["transform_matrix"])
            assert c2w.shape == (4, 4) and np.allclose(c2w[3], [0, 0, 0, 1])
            np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-6)
            assert np.linalg.det(c2w[:3, :3]) > 0
            K = frame.intrinsic
            expected = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, WIDTH, HEIGHT]
            np.testing.assert_allclose([entry[k] for k in ("fl_x", "fl_y", "cx", "cy", "w", "h")], expected, rtol=1e-6)
            with Image.open(os.path.join(folder, entry["file_path"])) as image:
                assert (image.format, image.size) == ("JPEG", (WIDTH, HEIGHT))
            with Image.open(os.path.join(folder, entry["depth_file_path"])) as depth:
                assert (depth.format, depth.mode, depth.size) == ("PNG", "I;16", (WIDTH, HEIGHT))
        with open(os.path.join(folder, doc["ply_file_path"]), "rb") as f:
            ply = parse_ply(f.read())
        assert len(ply["x"]) == POINTS and {"red", "green", "blue"} <= set(ply)


def test_depth_pngs_hold_millimetres_of_the_depth_maps(ns_run):
    for name, doc in ns_run["docs"].items():
        for entry, frame in zip(doc["frames"], ns_run["frames"][name]):
            data = open(os.path.join(ns_run["folders"][name], entry["depth_file_path"]), "rb").read()
            depth = decode_depth(data, 1000.0)
            assert doc["zipmap"]["depth_unit_scale_factor"] == 1e-3
            valid = frame.depth > 0
            np.testing.assert_allclose(depth[valid], frame.depth[valid], atol=0.5e-3 + 1e-6)
            assert (depth[~valid] == 0).all()


def _rays(entry: dict, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nerfstudio's rays (origins, directions with a unit -z component in the camera) of pixels."""
    c2w = np.array(entry["transform_matrix"])
    x = (cols + 0.5 - entry["cx"]) / entry["fl_x"]
    y = (rows + 0.5 - entry["cy"]) / entry["fl_y"]
    directions = np.stack([x, -y, -np.ones_like(x)], axis=1) @ c2w[:3, :3].T  # OpenGL: y up, looking down -z
    return np.broadcast_to(c2w[:3, 3], directions.shape), directions


def _project(entry: dict, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cols, rows, depths) of world points in a frame, by the same convention."""
    c2w = np.array(entry["transform_matrix"])
    local = (xyz - c2w[:3, 3]) @ c2w[:3, :3]
    depth = -local[:, 2]
    cols = entry["fl_x"] * local[:, 0] / depth + entry["cx"] - 0.5
    rows = -entry["fl_y"] * local[:, 1] / depth + entry["cy"] - 0.5
    return cols, rows, depth


def test_depth_along_nerfstudio_rays_gives_the_scene_points(ns_run):
    """Every pixel's ray, walked to the PNG's depth, reaches the ground-truth surface point."""
    for name, doc in ns_run["docs"].items():
        for entry, frame in zip(doc["frames"], ns_run["frames"][name]):
            rows, cols = np.nonzero(frame.depth > 0)
            depth = decode_depth(open(os.path.join(ns_run["folders"][name], entry["depth_file_path"]), "rb").read(),
                                 1000.0)[rows, cols]
            origins, directions = _rays(entry, cols.astype(np.float64), rows.astype(np.float64))
            reached = origins + directions * depth[:, None]
            truth = frame.world_points[rows, cols].astype(np.float64)
            err = np.linalg.norm(reached - truth, axis=1) / depth
            assert err.max() < 2e-3, err.max()  # millimetre depth quantisation only


def _seed_points(folder: str, doc: dict) -> np.ndarray:
    with open(os.path.join(folder, doc["ply_file_path"]), "rb") as f:
        ply = parse_ply(f.read())
    return np.stack([ply["x"], ply["y"], ply["z"]], 1).astype(np.float64)


def _agreement(folder: str, entries: list[dict], xyz: np.ndarray) -> tuple[int, int]:
    """(points whose projection lands on a pixel of their depth, points projected into a frame)."""
    agree = seen = 0
    for entry in entries:
        depth = decode_depth(open(os.path.join(folder, entry["depth_file_path"]), "rb").read(), 1000.0)
        cols, rows, z = _project(entry, xyz)
        c, r = np.rint(cols).astype(int), np.rint(rows).astype(int)
        inside = (z > 0) & (c >= 0) & (c < WIDTH) & (r >= 0) & (r < HEIGHT)
        seen += int(inside.sum())
        agree += int((np.abs(depth[r[inside], c[inside]] - z[inside]) < 0.02 * z[inside]).sum())
    return agree, seen


def test_seed_points_reproject_into_every_frame_where_its_depth_sees_them(ns_run):
    """Multi-view: the PLY's points projected into *every* frame by nerfstudio's convention land
    on pixels whose depth is theirs (up to occlusions and silhouettes)."""
    for name, doc in ns_run["docs"].items():
        folder = ns_run["folders"][name]
        agree, seen = _agreement(folder, doc["frames"], _seed_points(folder, doc))
        assert seen > POINTS and agree / seen > 0.8, (name, agree, seen)


@pytest.mark.parametrize(
    "mistake",
    [
        lambda c2w: c2w @ np.diag([1.0, -1.0, -1.0, 1.0]),  # OpenCV camera axes left in
        lambda c2w: np.block([[c2w[:3, :3].T, c2w[:3, 3:]], [c2w[3:]]]),  # world-to-camera rotation
        lambda c2w: c2w @ np.diag([1.0, -1.0, 1.0, 1.0]),  # a mirrored camera
    ],
)
def test_a_wrong_convention_fails_the_reprojection(ns_run, mistake):
    """The multi-view check is not vacuous: the usual convention mistakes fail it."""
    for name, doc in ns_run["docs"].items():
        folder = ns_run["folders"][name]
        wrong = [dict(e, transform_matrix=mistake(np.array(e["transform_matrix"])).tolist()) for e in doc["frames"]]
        agree, seen = _agreement(folder, wrong, _seed_points(folder, doc))
        assert agree < 0.3 * max(seen, POINTS), (name, agree, seen)


def test_depth_files_are_16_bit(ns_run):
    name = next(iter(SCENES))
    entry = ns_run["docs"][name]["frames"][0]
    data = open(os.path.join(ns_run["folders"][name], entry["depth_file_path"]), "rb").read()
    assert np.asarray(Image.open(io.BytesIO(data))).dtype == np.uint16
