"""What an engine hands out: one frame's reconstruction, on the host, ready to be written."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class FramePrediction:
    """One frame of a reconstructed sequence, in the first camera's world frame.

    Arrays are float32 numpy arrays on the host. `extrinsic` maps world to camera (OpenCV
    convention: x right, y down, z forward). `camera_conf` is the mean depth confidence of the
    frame (the camera head predicts no confidence of its own). `world_points` is the depth map
    unprojected with the predicted camera, computed on first access so that engines only move
    depth and confidence off the GPU.
    """

    index: int
    extrinsic: np.ndarray  # [3, 4]
    intrinsic: np.ndarray  # [3, 3]
    depth: np.ndarray  # [H, W]
    depth_conf: np.ndarray  # [H, W]
    image: np.ndarray  # [H, W, 3] uint8, the preprocessed model input (colours for point clouds)
    camera_conf: float
    local_points: np.ndarray | None = None  # [H, W, 3] world frame, from the local-point head if run

    @property
    def height(self) -> int:
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth.shape[1])

    @cached_property
    def world_points(self) -> np.ndarray:
        """[H, W, 3] world points of the depth map."""
        H, W = self.depth.shape
        K, R, t = self.intrinsic, self.extrinsic[:, :3], self.extrinsic[:, 3]
        x = (np.arange(W, dtype=np.float32) - K[0, 2]) / K[0, 0]
        y = (np.arange(H, dtype=np.float32) - K[1, 2]) / K[1, 1]
        # world = R^T (camera - t) with camera = depth * (x, y, 1): component by component, as
        # depth * (ray in world axes) - R^T t, which is 3x faster than a [H, W, 3] @ [3, 3] matmul
        offset = R.T @ t
        points = np.empty((H, W, 3), dtype=np.float32)
        for j in range(3):
            ray = R[0, j] * x[None, :] + (R[1, j] * y[:, None] + R[2, j])
            np.multiply(ray, self.depth, out=points[..., j])
            points[..., j] -= offset[j]
        return points
