"""Synthetic capture sequences with exact ground truth, rendered by an analytic ray caster.

Scenes (rooms, object studios, terrain) are built from textured spheres, boxes, cylinders and
rectangles; cameras follow orbit, walk-through or forward paths. Everything is drawn from one
seed, so a sequence can be regenerated bit for bit instead of being stored.
"""

from .dataset import generate_dataset, read_ground_truth, read_sequence, write_sequence
from .generate import SceneSetup, SyntheticSequence, build_setup, generate_sequence, render_views
from .scenes import SCENES
from .trajectories import TRAJECTORIES

__all__ = [
    "SCENES",
    "TRAJECTORIES",
    "SceneSetup",
    "SyntheticSequence",
    "build_setup",
    "generate_dataset",
    "generate_sequence",
    "read_ground_truth",
    "read_sequence",
    "write_sequence",
    "render_views",
]
