"""COLMAP sparse models, written (and read back in the tests) with pycolmap.

Per sequence: `sparse/0/` (cameras, images, points3D; pycolmap also writes its rigs and frames,
which older readers ignore) and `images/`. Every frame is one PINHOLE camera at the exported
images' resolution and one image with its world-to-camera pose (quaternion + translation, OpenCV
axes, the run's world = the first camera). points3D are a deterministic sample of the sequence's
point cloud with their colours; without voxels each point is observed once, at the pixel of the
frame it was unprojected from (the frame's `points2D`), which is what Gaussian-splatting
trainers and depth-supervised methods read. Voxel-averaged points belong to no single frame and
have empty tracks.
"""

from __future__ import annotations

import json
import os
import posixpath

import numpy as np

from ..errors import InputError
from .encode import encode_image
from .options import ColmapExport
from .sequence import ExportSequence, FrameData, frame_file_name, rgb_of, xyz_of

MODEL_DIR = "sparse/0"
SOURCES_FILE = "source_images.json"  # images: source: where every image of the model lies
EXIF_ORIENTATION = 0x0112


class ColmapWriter:
    """One format of `pipeline.exports`: per-frame files during a run, the model at the end."""

    def __init__(self, options: ColmapExport):
        self.options = options
        self.kind = options.kind

    def frame_files(self, frame: FrameData) -> dict[str, bytes]:
        if self.options.images != "copy" or frame.image is None:
            return {}
        ext = self.options.image_format
        return {f"images/{frame_file_name(frame.index, ext)}": encode_image(frame.image, ext)}

    def write(self, sequence: ExportSequence, folder: str, *, local_sources: bool, has_depth: bool) -> None:
        """Write the model into the local `folder` (the frame files are already there)."""
        model = os.path.join(folder, *MODEL_DIR.split("/"))
        os.makedirs(model, exist_ok=True)
        rec = reconstruction(sequence, self.options)
        if self.options.model_format in ("binary", "both"):
            rec.write_binary(model)
        if self.options.model_format in ("text", "both"):
            rec.write_text(model)
        if self.options.images == "source":
            names = [image_name(sequence, pos, self.options) for pos in range(len(sequence.cameras))]
            link_sources(sequence, folder, names, local_sources)


def image_name(sequence: ExportSequence, position: int, options: ColmapExport) -> str:
    camera = sequence.cameras[position]
    if options.images == "source":
        return source_name(camera.source_uri)
    return frame_file_name(camera, options.image_format)


def source_name(uri: str) -> str:
    """The file name of a source frame that can be linked as it is stored (`check_linkable`)."""
    check_linkable(uri)
    return posixpath.basename(uri)


def check_linkable(uri: str) -> None:
    """Refuse a source frame that COLMAP or nerfstudio would not read as the model saw it (an input
    error: the sequence fails once, with this message, instead of being retried): a frame inside a
    video, or a local photo stored sideways with an EXIF orientation (the run turned it upright,
    so its camera is upright; both tools read the stored pixels as they are)."""
    if "#frame=" in uri:
        raise InputError(f"{uri} is a frame of a video: export it with images: copy")
    if "://" in uri and not uri.startswith("file://"):
        return  # not linked: only its URI is recorded
    from PIL import Image

    with Image.open(uri.removeprefix("file://")) as image:  # the header only
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in (0, 1):
        raise InputError(
            f"{uri} is stored rotated (EXIF orientation {orientation}), which COLMAP and nerfstudio do not apply: "
            "export it with images: copy"
        )


def reconstruction(sequence: ExportSequence, options: ColmapExport):
    """The sequence as a pycolmap.Reconstruction (cameras, posed images, points3D with tracks)."""
    import pycolmap

    at_source = options.images == "source"
    sample = sequence.sample(options.points)
    observed, uv = sequence.observations(sample)
    frame_of = sample.frames[observed] if len(observed) else np.empty(0, np.int64)
    rec = pycolmap.Reconstruction()
    point2d_index = np.zeros(len(sample.vertices), np.int64)
    image_of = np.zeros(len(sample.vertices), np.int64)  # 0: no observation
    for pos, camera in enumerate(sequence.cameras):
        pin = camera.pinhole(at_source, sequence.preprocess_size, sequence.preprocess_mode)
        cam_id = pos + 1
        rec.add_camera_with_trivial_rig(
            pycolmap.Camera(
                model="PINHOLE", width=pin.width, height=pin.height,
                params=[pin.fx, pin.fy, pin.cx, pin.cy], camera_id=cam_id,
            )
        )
        rows = np.flatnonzero(frame_of == pos)  # in cloud order, so keypoints keep that order
        keypoints = uv[rows]
        if at_source and len(rows):
            keypoints = camera.to_source(keypoints, sequence.preprocess_size, sequence.preprocess_mode)
        image = pycolmap.Image(
            name=image_name(sequence, pos, options), keypoints=keypoints, camera_id=cam_id, image_id=cam_id
        )
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(camera.rotation), camera.translation)
        rec.add_image_with_trivial_frame(image, pose)
        point2d_index[observed[rows]] = np.arange(len(rows))
        image_of[observed[rows]] = cam_id
    xyz, rgb = xyz_of(sample.vertices), rgb_of(sample.vertices)
    for i in range(len(xyz)):
        track = pycolmap.Track()
        if image_of[i]:
            track.add_element(int(image_of[i]), int(point2d_index[i]))
        rec.add_point3D(xyz[i], track, rgb[i])
    return rec


def link_sources(sequence: ExportSequence, folder: str, names: list[str], local_sources: bool) -> None:
    """images: source: record where each image lies and, when the sources and the export are on
    local disks, link them into `images/` so the model opens as it is."""
    sources = {name: camera.source_uri for name, camera in zip(names, sequence.cameras)}
    with open(os.path.join(folder, SOURCES_FILE), "w") as f:
        json.dump({"images": sources}, f, indent=2, sort_keys=True)
    if local_sources:
        images = os.path.join(folder, "images")
        os.makedirs(images, exist_ok=True)
        for name, uri in sources.items():
            os.symlink(os.path.abspath(uri), os.path.join(images, name))
