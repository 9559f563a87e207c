"""Evaluation of reconstructions against exact ground truth (depth, cameras, point clouds).

Everything aligns first, because a prediction's frame and scale are its own: depth by median
scale, cameras and points by Sim(3) Umeyama. `python -m zipmap_core.evaluation` runs it over a
dataset written by `zipmap_core.synthetic`.
"""

from .alignment import Sim3, umeyama
from .baseline import trivial_prediction
from .metrics import camera_metrics, depth_metrics, evaluate_sequence, pointcloud_metrics
from .neighbors import nearest_distances
from .plotting import plot_trajectories

__all__ = [
    "Sim3",
    "camera_metrics",
    "depth_metrics",
    "evaluate_sequence",
    "nearest_distances",
    "plot_trajectories",
    "pointcloud_metrics",
    "trivial_prediction",
    "umeyama",
]
