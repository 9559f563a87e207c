"""Turn batched head outputs into per-frame host results."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from zipmap_core.engines.results import FramePrediction
from zipmap_core.geometry import invert_rigid, local_to_world, to_homogeneous, unproject_depth


def align_to_reference(extrinsics: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Camera-from-world [..., 3, 4] re-expressed in the frame of `reference` [3, 4] (frame 0)."""
    return extrinsics @ to_homogeneous(invert_rigid(reference))


def frame_predictions(
    first_index: int,
    images: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    dense: dict[str, torch.Tensor],
) -> Iterator[FramePrediction]:
    """images [S, 3, H, W]; aligned cameras [S, 3, 4] / [S, 3, 3]; dense maps [1, S, ...]."""
    depth = dense["depth"][0, ..., 0].float()
    conf = dense["depth_conf"][0].float()
    extrinsics, intrinsics = extrinsics.float().to(depth.device), intrinsics.float().to(depth.device)
    world = unproject_depth(depth, extrinsics, intrinsics)
    local = dense.get("local_points")
    local_world = None if local is None else local_to_world(local[0].float(), extrinsics)
    rgb = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    to_np = lambda t: t.detach().cpu().numpy()  # noqa: E731
    depth, conf, world, rgb = to_np(depth), to_np(conf), to_np(world), to_np(rgb)
    ext, K = to_np(extrinsics), to_np(intrinsics)
    local_world = None if local_world is None else to_np(local_world)
    for s in range(depth.shape[0]):
        yield FramePrediction(
            index=first_index + s,
            extrinsic=ext[s].astype(np.float32),
            intrinsic=K[s].astype(np.float32),
            depth=depth[s],
            depth_conf=conf[s],
            world_points=world[s],
            image=rgb[s],
            camera_conf=float(conf[s].mean()),
            local_points=None if local_world is None else local_world[s],
        )
