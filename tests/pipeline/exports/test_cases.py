"""Exports of runs made with other settings: voxel-averaged clouds, no point cloud, video input."""

from __future__ import annotations

import json
import os

import numpy as np
import pycolmap
import pytest
from PIL import Image

from pipeline import read_outputs
from pipeline.decode import decode_sequence
from pipeline.discovery import SequenceSource
from pipeline.exports.run import export_run
from pipeline.spec import FrameSampling

from ..conftest import make_spec
from .ground_truth import HEIGHT, WIDTH, commit_run, ground_truth_frames, write_sources


def test_voxel_clouds_export_points_without_tracks(tmp_path):
    """Voxel-averaged points belong to no single frame: points3D with empty tracks, still read."""
    frames = ground_truth_frames("room_orbit", num_frames=3)
    spec = make_spec(
        tmp_path / "in", tmp_path / "out", None, run_id="vox", model__allow_random_weights="true",
        point_cloud__voxel_size=0.05, exports="[{format: colmap, points: 1000}, nerfstudio]", report__points=1000,
    )
    run_uri = commit_run(spec, {"s": (frames, write_sources(tmp_path / "in" / "s", frames))})
    rec = pycolmap.Reconstruction(os.path.join(run_uri, "exports", "colmap", "s", "sparse", "0"))
    assert rec.num_points3D() == 1000 and rec.num_images() == 3
    assert all(len(p.track.elements) == 0 for p in rec.points3D.values())
    assert all(image.num_points2D() == 0 for image in rec.images.values())
    cloud = read_outputs(run_uri).point_cloud("s")
    assert len(cloud) < sum(int((f.depth > 0).sum()) for f in frames)  # voxels merged points
    doc = json.load(open(os.path.join(run_uri, "exports", "nerfstudio", "s", "transforms.json")))
    assert doc["ply_file_path"] == "sparse_pc.ply"


def test_without_a_point_cloud_the_exports_have_cameras_only(tmp_path):
    frames = ground_truth_frames("room_orbit", num_frames=2)
    spec = make_spec(
        tmp_path / "in", tmp_path / "out", None, run_id="nopc", model__allow_random_weights="true",
        point_cloud__enabled="false", exports="[colmap, nerfstudio]",
    )
    run_uri = commit_run(spec, {"s": (frames, write_sources(tmp_path / "in" / "s", frames))})
    rec = pycolmap.Reconstruction(os.path.join(run_uri, "exports", "colmap", "s", "sparse", "0"))
    assert (rec.num_images(), rec.num_points3D()) == (2, 0)
    folder = os.path.join(run_uri, "exports", "nerfstudio", "s")
    assert "ply_file_path" not in json.load(open(os.path.join(folder, "transforms.json")))
    assert not os.path.exists(os.path.join(folder, "sparse_pc.ply"))
    assert os.path.exists(os.path.join(run_uri, "previews", "s", "trajectory.png"))


@pytest.mark.parametrize("spec_stride", [2, 1], ids=["spec stride", "manifest row stride"])
def test_exports_of_a_video_run_decode_the_frames_again(tmp_path, spec_stride):
    """A finished run from a video: `export` decodes the frames the run recorded (every other one),
    whether the spec or a manifest row (which the run does not keep) sampled them."""
    av = pytest.importorskip("av")
    frames = ground_truth_frames("objects_walk", num_frames=5)
    video = tmp_path / "in" / "walk.mp4"
    video.parent.mkdir(parents=True)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f.image, format="rgb24")))
        container.mux(stream.encode())
    spec = make_spec(
        tmp_path / "in", tmp_path / "out", None, run_id="vid", model__allow_random_weights="true",
        input__frame_stride=spec_stride, report__enabled="false",
    )
    kept = [f.__class__(**{**f.__dict__, "index": i}) for i, f in enumerate(frames[::2])]
    uris = [f"{video}#frame={i}" for i in (0, 2, 4)]
    run_uri = commit_run(spec, {"walk": (kept, uris)}, source_size=(WIDTH, HEIGHT))

    result = export_run(run_uri, [{"format": "colmap", "image_format": "png", "points": 100}])
    assert list(result.done) == ["walk"], result.failed
    source = SequenceSource(sequence_id="walk", kind="video", uri=str(video), sampling=FrameSampling(frame_stride=2))
    decoded = decode_sequence(source, spec)
    assert decoded.frame_uris == uris
    for i in range(3):
        path = os.path.join(run_uri, "exports", "colmap", "walk", "images", f"frame_{i:05d}.png")
        np.testing.assert_array_equal(np.asarray(Image.open(path)), decoded.pixels[i].transpose(1, 2, 0))

    linked = export_run(run_uri, [{"format": "colmap", "images": "source"}])
    assert "is a frame of a video: export it with images: copy" in linked.failed["walk"]


def test_exports_of_an_image_run_sampled_by_fps_decode_the_recorded_frames(tmp_path):
    """Frames 1 and 3 of a 10 fps folder sampled at 5 fps: the export decodes those two, not the
    fps rule applied again to them (which keeps one)."""
    frames = ground_truth_frames("room_orbit", num_frames=4)
    paths = write_sources(tmp_path / "in" / "s", frames)
    spec = make_spec(
        tmp_path / "in", tmp_path / "out", None, run_id="fps", model__allow_random_weights="true",
        input__fps=5, input__image_fps=10, report__enabled="false",
    )
    kept = [f.__class__(**{**f.__dict__, "index": i}) for i, f in enumerate(frames[1::2])]
    run_uri = commit_run(spec, {"s": (kept, paths[1::2])})

    result = export_run(run_uri, [{"format": "colmap", "image_format": "png", "points": 100}])
    assert list(result.done) == ["s"], result.failed
    for i, f in enumerate(kept):
        path = os.path.join(run_uri, "exports", "colmap", "s", "images", f"frame_{i:05d}.png")
        np.testing.assert_array_equal(np.asarray(Image.open(path)), f.image)


def test_photos_stored_rotated_are_copied_upright_not_linked(tmp_path):
    """A phone photo stored sideways (EXIF orientation 6): the run saw it upright, so its camera is
    upright; linking the stored file would hand COLMAP and nerfstudio sideways pixels."""
    frames = ground_truth_frames("room_orbit", num_frames=2)
    paths = write_sources(tmp_path / "in" / "s", frames)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after turning 90 degrees clockwise
    Image.fromarray(np.rot90(frames[1].image)).save(paths[1], exif=exif)
    spec = make_spec(
        tmp_path / "in", tmp_path / "out", None, run_id="rot", model__allow_random_weights="true",
        report__enabled="false",
    )
    run_uri = commit_run(spec, {"s": (frames, paths)}, source_size=(WIDTH, HEIGHT))

    for options in ({"format": "colmap"}, {"format": "nerfstudio", "depth": False}):
        linked = export_run(run_uri, [{**options, "images": "source"}])
        assert "stored rotated (EXIF orientation 6)" in linked.failed["s"] and "images: copy" in linked.failed["s"]
    copied = export_run(run_uri, [{"format": "colmap", "image_format": "png", "points": 100}])
    assert list(copied.done) == ["s"], copied.failed
    path = os.path.join(run_uri, "exports", "colmap", "s", "images", "frame_00001.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), frames[1].image)
