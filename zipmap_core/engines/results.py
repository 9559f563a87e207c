"""What an engine hands out: one frame's reconstruction, on the host, ready to be written."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FramePrediction:
    """One frame of a reconstructed sequence, in the first camera's world frame.

    Arrays are float32 numpy arrays on the host. `extrinsic` maps world to camera (OpenCV
    convention: x right, y down, z forward); `world_points` is the depth map unprojected with the
    predicted camera. `camera_conf` is the mean depth confidence of the frame (the camera head
    predicts no confidence of its own).
    """

    index: int
    extrinsic: np.ndarray  # [3, 4]
    intrinsic: np.ndarray  # [3, 3]
    depth: np.ndarray  # [H, W]
    depth_conf: np.ndarray  # [H, W]
    world_points: np.ndarray  # [H, W, 3]
    image: np.ndarray  # [H, W, 3] uint8, the preprocessed model input (colours for point clouds)
    camera_conf: float
    local_points: np.ndarray | None = None  # [H, W, 3] in the camera frame, when the model has the head

    @property
    def height(self) -> int:
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth.shape[1])
