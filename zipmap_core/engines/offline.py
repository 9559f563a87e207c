"""Offline bidirectional reconstruction: the whole sequence in one forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from zipmap_core.engines.config import EngineConfig
from zipmap_core.engines.frames import align_to_reference, frame_predictions
from zipmap_core.engines.precision import autocast
from zipmap_core.engines.results import FramePrediction
from zipmap_core.geometry import pose_encoding_to_cameras
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.scene_state import SceneState

StateSink = Callable[[SceneState], None]  # receives the sequence's scene state once it is trained


@torch.inference_mode()
def reconstruct_offline(
    model: ZipMap, images: torch.Tensor, engine: EngineConfig, device: torch.device, on_state: StateSink | None = None
) -> Iterator[FramePrediction]:
    with autocast(device, engine.dtype):
        out = model(images.to(device).unsqueeze(0), local_points=engine.local_points)
    extrinsics, intrinsics = pose_encoding_to_cameras(out["pose_enc"][0], images.shape[-2:])
    extrinsics = align_to_reference(extrinsics, extrinsics[0])
    if on_state is not None:
        on_state(SceneState.capture(model, out["states"], images.shape[-2:], images.shape[0], extrinsics, intrinsics))
    yield from frame_predictions(0, images, extrinsics, intrinsics, out)
