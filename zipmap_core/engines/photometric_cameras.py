"""`EngineConfig(cameras="photometric")`: the frames an engine hands out, with each camera
replaced by direct photometric alignment against the previous frame's predicted depth
(`zipmap_core.photometric`). Works on any ordered stream of `FramePrediction`s, so a
`StreamingSession`'s output can be passed through it too."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from zipmap_core.engines.results import FramePrediction
from zipmap_core.photometric import CameraChain


def with_photometric_cameras(
    frames: Iterable[FramePrediction], device: str | torch.device = "cpu"
) -> Iterator[FramePrediction]:
    """`frames` in order, the first with its own camera, each later one with the camera of its
    alignment to the one before (starting from no motion and from the previous motion). Intrinsics,
    depth and confidence are unchanged; local-head world points follow the new camera."""
    chain = CameraChain()
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            extrinsic = chain.add(
                torch.from_numpy(np.ascontiguousarray(frame.image)).to(device).permute(2, 0, 1).float() / 255,
                torch.from_numpy(frame.depth).to(device, torch.float32),
                torch.from_numpy(frame.intrinsic).to(device, torch.float32),
                torch.from_numpy(frame.extrinsic),
            )
            yield frame if i == 0 else _with_camera(frame, extrinsic.cpu().numpy().astype(np.float32))


def _with_camera(frame: FramePrediction, extrinsic: np.ndarray) -> FramePrediction:
    local = frame.local_points
    if local is not None:  # world (old camera) -> camera -> world (new camera)
        old_r, old_t = frame.extrinsic[:, :3], frame.extrinsic[:, 3]
        new_r, new_t = extrinsic[:, :3], extrinsic[:, 3]
        camera = local @ old_r.T + old_t
        local = ((camera - new_t) @ new_r).astype(np.float32)
    return dataclasses.replace(frame, extrinsic=extrinsic, local_points=local)
