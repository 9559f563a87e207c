"""Offline bidirectional reconstruction: the whole sequence in one forward pass."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zipmap_core.engines.config import EngineConfig
from zipmap_core.engines.frames import align_to_reference, frame_predictions
from zipmap_core.engines.precision import autocast
from zipmap_core.engines.results import FramePrediction
from zipmap_core.geometry import pose_encoding_to_cameras
from zipmap_core.models.zipmap import ZipMap


@torch.inference_mode()
def reconstruct_offline(
    model: ZipMap, images: torch.Tensor, engine: EngineConfig, device: torch.device
) -> Iterator[FramePrediction]:
    with autocast(device, engine.dtype):
        out = model(images.to(device).unsqueeze(0), local_points=engine.local_points)
    extrinsics, intrinsics = pose_encoding_to_cameras(out["pose_enc"][0], images.shape[-2:])
    extrinsics = align_to_reference(extrinsics, extrinsics[0])
    yield from frame_predictions(0, images, extrinsics, intrinsics, out)
