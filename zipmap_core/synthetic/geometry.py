"""Pinhole camera geometry in the OpenCV convention (x right, y down, z forward).

Extrinsics are camera-from-world [.., 3, 4] matrices. Pixel (row v, column u) looks through the
image coordinate (u, v) itself, the convention of `zipmap_core.geometry.unproject_depth`, so a
ray cast for a pixel and the unprojection of its depth describe exactly the same 3D point. The
helpers here are the extra pieces a renderer needs (look-at poses, rays, projection).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def intrinsics_from_fov(fov_x_deg: float, height: int, width: int) -> Tensor:
    """Square pixels, principal point at the image centre."""
    focal = (width / 2.0) / math.tan(math.radians(fov_x_deg) / 2.0)
    return torch.tensor(
        [[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def look_at(eyes: Tensor, targets: Tensor, up: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> Tensor:
    """Camera-from-world extrinsics [S, 3, 4] of cameras at `eyes` looking at `targets`.

    The camera's y axis points down along the world `up`, so the views stay upright.
    """
    up_t = torch.tensor(up, dtype=eyes.dtype, device=eyes.device).expand_as(eyes)
    forward = torch.nn.functional.normalize(targets - eyes, dim=-1)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, up_t, dim=-1), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    rotation = torch.stack([right, down, forward], dim=-2)
    translation = -(rotation @ eyes.unsqueeze(-1))
    return torch.cat([rotation, translation], dim=-1)


def camera_centres(extrinsics: Tensor) -> Tensor:
    """World positions [.., 3] of the cameras: C = -R^T t."""
    rotation, translation = extrinsics[..., :3, :3], extrinsics[..., :3, 3:]
    return -(rotation.transpose(-1, -2) @ translation).squeeze(-1)


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu", dtype=torch.float32) -> Tensor:
    """Image coordinates (u, v) of every pixel, [H, W, 2]."""
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def pixel_rays(extrinsics: Tensor, intrinsics: Tensor, uv: Tensor) -> tuple[Tensor, Tensor]:
    """World-space rays through image coordinates `uv` [S, ..., 2] of S cameras.

    Directions are scaled so that their component along the optical axis is 1: the ray parameter
    of a hit is then its z-depth. Returns origins and directions, both [S, ..., 3].
    """
    s = extrinsics.shape[0]
    flat = uv.reshape(s, -1, 2)
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None]
    cam_dirs = torch.stack(
        [(flat[..., 0] - cx) / fx, (flat[..., 1] - cy) / fy, torch.ones_like(flat[..., 0])], dim=-1
    )
    rotation = extrinsics[:, :3, :3]
    dirs = cam_dirs @ rotation  # rows times R == R^T applied to each direction
    origins = camera_centres(extrinsics)[:, None, :].expand_as(dirs)
    shape = (*uv.shape[:-1], 3)
    return origins.reshape(shape), dirs.reshape(shape)


def project_points(points: Tensor, extrinsics: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Image coordinates [S, N, 2] and z-depths [S, N] of world points [S, N, 3] in S cameras."""
    cam = points @ extrinsics[:, :3, :3].transpose(-1, -2) + extrinsics[:, None, :3, 3]
    z = cam[..., 2]
    safe_z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    u = intrinsics[:, None, 0, 0] * cam[..., 0] / safe_z + intrinsics[:, None, 0, 2]
    v = intrinsics[:, None, 1, 1] * cam[..., 1] / safe_z + intrinsics[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), z
