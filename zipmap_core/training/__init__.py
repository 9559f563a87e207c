"""Training and fine-tuning ZipMap on synthetic sequences rendered on the fly.

    python -m zipmap_core.training --config demo_ttt --minutes 4 --out ckpt.safetensors --device cuda

Losses follow VGGT (camera pose encoding relative to the first frame, confidence-weighted depth,
camera-frame points; all lengths in units of the scene scale). The model is plain differentiable
torch, so gradients flow through the TTT fast-weight updates like through any other layer.
"""

from zipmap_core.training.data import TRAIN_SEED_START, Batch, SyntheticBatches, batch_from_sequences, held_out_seeds
from zipmap_core.training.losses import (
    LossWeights,
    Targets,
    camera_loss,
    depth_loss,
    make_targets,
    points_loss,
    scene_scale,
    total_loss,
)
from zipmap_core.training.trainer import (
    TrainConfig,
    TrainResult,
    batch_loss,
    forward_for_training,
    init_pose_output,
    make_data,
    make_optimizer,
    train,
    train_step,
)

__all__ = [
    "TRAIN_SEED_START",
    "Batch",
    "LossWeights",
    "SyntheticBatches",
    "Targets",
    "TrainConfig",
    "TrainResult",
    "batch_from_sequences",
    "batch_loss",
    "camera_loss",
    "depth_loss",
    "forward_for_training",
    "held_out_seeds",
    "init_pose_output",
    "make_data",
    "make_optimizer",
    "make_targets",
    "points_loss",
    "scene_scale",
    "total_loss",
    "train",
    "train_step",
]
