"""A trivial predictor, the floor any trained model has to beat on the same metrics."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import ground_truth_arrays


def trivial_prediction(gt: Any) -> dict[str, np.ndarray]:
    """Constant depth (the GT median over valid pixels), identity poses, the GT intrinsics."""
    g = ground_truth_arrays(gt)
    depth = g["depth"][g["valid"]]
    level = float(depth.median()) if depth.numel() else 1.0
    s, h, w = g["depth"].shape
    extrinsics = np.zeros((s, 3, 4), np.float32)
    extrinsics[:, :, :3] = np.eye(3, dtype=np.float32)
    return {
        "extrinsics": extrinsics,
        "intrinsics": g["intrinsics"].numpy().astype(np.float32),
        "depth": np.full((s, h, w), level, np.float32),
    }
