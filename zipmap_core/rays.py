"""Ray conditions: how the state-query model is told which view to render.

Every pixel of a query view becomes 9 channels, the released "plucker_and_common_origin" type:
the camera centre o (the same for every pixel), the unit viewing direction d through the pixel's
centre, and the moment o x d. Cameras are camera-to-world, OpenCV axes (x right, y down, z
forward), intrinsics in pixels, in the frame of the sequence's first input camera and the model's
units (the frame of the reconstruction's own cameras).

One quirk of the released builder is kept: it guesses the image size the intrinsics were made
for as (int(2 max cy), int(2 max cx)) over all cameras of the call, and when that differs from the
size being rendered it rescales fx, cx and fy, cy to it. With the principal point at the image
centre (as every predicted camera has) nothing changes; an off-centre principal point is moved.
Because the guess spans all cameras of a call, `effective_intrinsics` is applied once to a whole
set of cameras before they are split into batches.
"""

from __future__ import annotations

import torch

from zipmap_core.geometry import invert_rigid


def effective_intrinsics(intrinsics: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """The intrinsics [..., 3, 3] the released builder actually uses for an H x W ray map."""
    H, W = image_hw
    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    cx, cy = intrinsics[..., 0, 2], intrinsics[..., 1, 2]
    h_orig, w_orig = int(2 * cy.max().item()), int(2 * cx.max().item())
    if (h_orig, w_orig) == (H, W):
        return intrinsics
    if h_orig <= 0 or w_orig <= 0:
        raise ValueError(f"principal points must be positive (in pixels), got max cx {cx.max()}, cy {cy.max()}")
    out = intrinsics.clone()
    out[..., 0, 0], out[..., 0, 2] = fx * W / w_orig, cx * W / w_orig
    out[..., 1, 1], out[..., 1, 2] = fy * H / h_orig, cy * H / h_orig
    return out


def plucker_rays(cam_to_world: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Camera-to-world [..., 3, 4] and intrinsics [..., 3, 3] used as given -> [..., 9, H, W]."""
    H, W = image_hw
    dtype, device = cam_to_world.dtype, cam_to_world.device
    K = intrinsics.to(dtype)
    u = (torch.arange(W, dtype=dtype, device=device) + 0.5 - K[..., 0, 2, None]) / K[..., 0, 0, None]  # [..., W]
    v = (torch.arange(H, dtype=dtype, device=device) + 0.5 - K[..., 1, 2, None]) / K[..., 1, 1, None]  # [..., H]
    shape = u.shape[:-1] + (H, W)
    columns, rows = u[..., None, :].expand(shape), v[..., :, None].expand(shape)
    d_cam = torch.stack([columns, rows, torch.ones(shape, dtype=dtype, device=device)], dim=-1)  # [..., H, W, 3]
    R, t = cam_to_world[..., :3, :3], cam_to_world[..., :3, 3]
    d = d_cam.flatten(-3, -2) @ R.mT  # [..., H*W, 3]
    d = d / d.norm(dim=-1, keepdim=True)
    o = t[..., None, :].expand_as(d)
    rays = torch.cat([o, d, torch.linalg.cross(o, d, dim=-1)], dim=-1)  # [..., H*W, 9]
    return rays.mT.unflatten(-1, (H, W))


def ray_conditions(cam_to_world: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """The released `get_ray_conditions(c2w, K, (H, W), "plucker_and_common_origin")`:
    cameras [B, K, 3, 4] / [B, K, 3, 3] -> [B, K, 9, H, W] (with the principal-point quirk)."""
    return plucker_rays(cam_to_world, effective_intrinsics(intrinsics, image_hw), image_hw)


def rays_from_extrinsics(extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Ray conditions of world-to-camera extrinsics [..., 3, 4] (the pipeline's convention)."""
    return ray_conditions(invert_rigid(extrinsics), intrinsics, image_hw)
