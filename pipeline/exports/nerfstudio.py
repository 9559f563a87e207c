"""nerfstudio datasets: `transforms.json`, images, 16-bit depth PNGs and a seed point cloud.

`transform_matrix` is camera-to-world with OpenGL camera axes (x right, y up, z back), as
nerfstudio expects; intrinsics are per frame (`fl_x fl_y cx cy w h`, pixel corners on integers,
PINHOLE) because the model predicts them per frame. `depth_file_path` PNGs hold
round(depth * depth_scale) (millimetres of the model's unit by default, nerfstudio's default
`depth_unit_scale_factor` of 1e-3; 0 = no depth). `ply_file_path` is a sample of the sequence's
point cloud (x y z, red green blue, confidence), which nerfstudio's splatfacto uses to initialise
its Gaussians. The world is the run's: the first camera's OpenCV frame; nerfstudio re-orients and
re-centres it itself (its dataparser's `orientation_method` and `center_method`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..pointcloud import ply_header
from .colmap import check_linkable
from .encode import encode_depth, encode_image
from .options import NerfstudioExport
from .sequence import ExportSequence, FrameData, frame_file_name

TRANSFORMS = "transforms.json"
POINTS_FILE = "sparse_pc.ply"
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])  # flips the camera's y and z axes


class NerfstudioWriter:
    def __init__(self, options: NerfstudioExport):
        self.options = options
        self.kind = options.kind

    def frame_files(self, frame: FrameData) -> dict[str, bytes]:
        files = {}
        ext = self.options.image_format
        if self.options.images == "copy" and frame.image is not None:
            files[f"images/{frame_file_name(frame.index, ext)}"] = encode_image(frame.image, ext)
        if self.options.depth and frame.depth is not None:
            files[f"depth/{frame_file_name(frame.index, 'png')}"] = encode_depth(frame.depth, self.options.depth_scale)
        return files

    def write(self, sequence: ExportSequence, folder: str, *, local_sources: bool, has_depth: bool) -> None:
        os.makedirs(folder, exist_ok=True)
        document = transforms(sequence, self.options, with_depth=self.options.depth and has_depth)
        if self.options.images == "source" and not local_sources:
            document["zipmap"]["note"] = "file_path values are the source frames' URIs; nerfstudio reads local files"
        sample = sequence.sample(self.options.points)
        if len(sample.vertices):  # splatfacto initialises from these (randomly without)
            with open(os.path.join(folder, POINTS_FILE), "wb") as f:
                f.write(ply_header(len(sample.vertices), f"zipmap-pipeline sequence {sequence.sequence_id}"))
                f.write(np.ascontiguousarray(sample.vertices).tobytes())
            document["ply_file_path"] = POINTS_FILE
        with open(os.path.join(folder, TRANSFORMS), "w") as f:
            json.dump(document, f, indent=2)


def transforms(sequence: ExportSequence, options: NerfstudioExport, *, with_depth: bool) -> dict:
    """The transforms.json document (without ply_file_path)."""
    at_source = options.images == "source"
    frames = []
    for camera in sequence.cameras:
        pin = camera.pinhole(at_source, sequence.preprocess_size, sequence.preprocess_mode)
        if at_source:
            path = camera.source_uri if "://" in camera.source_uri else os.path.abspath(camera.source_uri)
            check_linkable(camera.source_uri)
        else:
            path = f"images/{frame_file_name(camera, options.image_format)}"
        frame = {
            "file_path": path,
            "transform_matrix": (camera.camera_to_world() @ OPENCV_TO_OPENGL).tolist(),
            "fl_x": pin.fx,
            "fl_y": pin.fy,
            "cx": pin.cx,
            "cy": pin.cy,
            "w": pin.width,
            "h": pin.height,
        }
        if with_depth:
            frame["depth_file_path"] = f"depth/{frame_file_name(camera, 'png')}"
        frames.append(frame)
    return {
        "camera_model": "PINHOLE",
        "frames": frames,
        "zipmap": {
            "sequence_id": sequence.sequence_id,
            "depth_unit_scale_factor": 1.0 / options.depth_scale if with_depth else None,
            "world": "the first camera's OpenCV frame (x right, y down, z forward), model units",
        },
    }
