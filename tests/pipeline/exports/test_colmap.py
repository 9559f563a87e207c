"""COLMAP exports read back with pycolmap: cameras, poses and points equal ours; points project to
the pixels the depth maps put them at (synthetic scenes with exact ground truth)."""

from __future__ import annotations

import json
import os

import numpy as np
import pycolmap
import pytest
import torch

from pipeline import read_outputs
from pipeline.exports.run import export_run
from zipmap_core.geometry import matrix_to_quaternion

from ..conftest import make_spec
from .ground_truth import HEIGHT, WIDTH, commit_run, ground_truth_frames, ground_truth_run, write_sources

POINTS = 3000


@pytest.fixture(scope="module")
def gt_run(tmp_path_factory):
    run_uri, frames = ground_truth_run(
        tmp_path_factory.mktemp("colmap"), exports=f"[{{format: colmap, model_format: both, points: {POINTS}}}]",
        report__enabled="false",
    )
    return {"run_uri": run_uri, "frames": frames}


def _model(run_uri: str, name: str, reader: str = "read_binary") -> pycolmap.Reconstruction:
    rec = pycolmap.Reconstruction()
    getattr(rec, reader)(os.path.join(run_uri, "exports", "colmap", name, "sparse", "0"))
    return rec


@pytest.mark.parametrize("reader", ["read_binary", "read_text"])
def test_pycolmap_reads_cameras_and_poses_equal_to_ours(gt_run, reader):
    for name, frames in gt_run["frames"].items():
        rec = _model(gt_run["run_uri"], name, reader)
        assert rec.num_images() == len(frames) and rec.num_cameras() == len(frames)
        for frame in frames:
            image = rec.images[frame.index + 1]
            assert image.name == f"frame_{frame.index:05d}.jpg"
            camera = rec.cameras[image.camera_id]
            assert (camera.model.name, camera.width, camera.height) == ("PINHOLE", WIDTH, HEIGHT)
            K = frame.intrinsic.astype(np.float64)
            # pixel corners on integers in COLMAP: our principal point + 0.5
            np.testing.assert_allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], rtol=1e-6)
            pose = image.cam_from_world()
            R, t = frame.extrinsic[:, :3].astype(np.float64), frame.extrinsic[:, 3].astype(np.float64)
            np.testing.assert_allclose(pose.rotation.matrix(), R, atol=2e-7)
            np.testing.assert_allclose(pose.translation, t, atol=1e-6)
            np.testing.assert_allclose(image.projection_center(), -R.T @ t, atol=1e-6)
            ours = matrix_to_quaternion(torch.from_numpy(R)).numpy()  # (x, y, z, w), w >= 0
            theirs = np.asarray(pose.rotation.quat)
            np.testing.assert_allclose(theirs * np.sign(theirs[3]), ours, atol=2e-7)


def test_points3d_are_a_sample_of_the_point_cloud_with_colours(gt_run):
    outputs = read_outputs(gt_run["run_uri"])
    for name in gt_run["frames"]:
        rec = _model(gt_run["run_uri"], name)
        cloud = outputs.point_cloud(name)
        assert rec.num_points3D() == POINTS < len(cloud)
        xyz = np.stack([p.xyz for p in rec.points3D.values()])
        rgb = np.stack([p.color for p in rec.points3D.values()])
        cloud_xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1).astype(np.float64)
        lookup = {tuple(p): i for i, p in enumerate(cloud_xyz)}
        index = np.array([lookup[tuple(p)] for p in xyz])  # every point is one of the cloud's, exactly
        assert len(set(index)) == POINTS
        np.testing.assert_array_equal(rgb, np.stack([cloud["red"], cloud["green"], cloud["blue"]], 1)[index])


def test_points_project_where_the_depth_maps_put_them(gt_run):
    """Each point3D is observed once, in the frame it came from. Where does that frame's depth map
    put it? The pixel whose depth unprojects to it (found with our own camera maths); pycolmap's
    projection must land on that pixel's centre, at that depth."""
    errors = []
    for name, frames in gt_run["frames"].items():
        rec = _model(gt_run["run_uri"], name)
        for point in rec.points3D.values():
            (element,) = point.track.elements
            image = rec.images[element.image_id]
            frame = frames[element.image_id - 1]
            K, R, t = (a.astype(np.float64) for a in (frame.intrinsic, frame.extrinsic[:, :3], frame.extrinsic[:, 3]))
            local = R @ point.xyz + t
            col = int(round(K[0, 0] * local[0] / local[2] + K[0, 2]))  # our pixel centres: integers
            row = int(round(K[1, 1] * local[1] / local[2] + K[1, 2]))
            depth = float(frame.depth[row, col])
            from_depth = R.T @ (depth * np.array([(col - K[0, 2]) / K[0, 0], (row - K[1, 2]) / K[1, 1], 1.0]) - t)
            np.testing.assert_allclose(point.xyz, from_depth, rtol=1e-5, atol=1e-5)  # it is that pixel's point
            in_camera = image.cam_from_world() * point.xyz
            projected = rec.cameras[image.camera_id].img_from_cam(in_camera)
            errors.append(np.linalg.norm(projected - [col + 0.5, row + 0.5]))
            np.testing.assert_allclose(in_camera[2], depth, rtol=1e-5)
            np.testing.assert_allclose(image.points2D[element.point2D_idx].xy, [col + 0.5, row + 0.5])
    assert len(errors) == POINTS * len(gt_run["frames"])
    assert max(errors) < 0.01, f"reprojection error against the depth maps up to {max(errors):.4f} px"


def test_export_of_a_finished_run_writes_the_same_files(gt_run, tmp_path):
    """`zipmap-pipeline export` on the committed run re-decodes the sources: byte-identical files."""
    run_uri = gt_run["run_uri"]
    folder = os.path.join(run_uri, "exports", "colmap", "room_orbit")
    before = _files(folder)
    result = export_run(run_uri, [{"format": "colmap", "model_format": "both", "points": POINTS}])
    assert set(result.done) == set(gt_run["frames"]) and not result.failed
    assert _files(folder) == before
    assert not os.path.exists(os.path.join(run_uri, "_staging"))
    marker = json.loads(open(os.path.join(run_uri, "_commits", "room_orbit.json")).read())
    assert marker["outputs"]["exports/colmap"] == folder


def test_source_images_mode_links_the_frames_with_cameras_at_their_resolution(tmp_path):
    """Captures twice the model's input size: the model's cameras move to their resolution, and the
    images of the model are the captures themselves (linked)."""
    frames = ground_truth_frames("objects_walk", num_frames=3)
    uris = write_sources(tmp_path / "in" / "walk", frames, scale=2)
    spec = make_spec(
        tmp_path / "in", tmp_path / "out", None, run_id="src", model__allow_random_weights="true",
        exports="[{format: colmap, images: source, points: 500}]", report__enabled="false",
    )
    run_uri = commit_run(spec, {"walk": (frames, uris)})
    folder = os.path.join(run_uri, "exports", "colmap", "walk")
    rec = _model(run_uri, "walk")
    sources = json.loads(open(os.path.join(folder, "source_images.json")).read())["images"]
    assert sorted(sources.values()) == sorted(uris)
    for image in rec.images.values():
        link = os.path.join(folder, "images", image.name)
        assert os.path.islink(link) and os.path.samefile(link, sources[image.name])
        frame = frames[image.image_id - 1]
        assert sources[image.name] == uris[frame.index]
        camera = rec.cameras[image.camera_id]
        K = frame.intrinsic.astype(np.float64)
        assert (camera.width, camera.height) == (2 * WIDTH, 2 * HEIGHT)
        # resizing by 2 doubles focal lengths and the principal point, in pixel-corner coordinates
        np.testing.assert_allclose(camera.params, 2 * np.array([K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]))
        for p2d in image.points2D:  # each observation is where its point projects in the capture
            projected = camera.img_from_cam(image.cam_from_world() * rec.points3D[p2d.point3D_id].xyz)
            np.testing.assert_allclose(projected, p2d.xy, atol=1e-3)
    assert rec.num_points3D() == 500


def _files(folder: str) -> dict[str, bytes]:
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out
