"""Output activations of the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activate_pose(enc: torch.Tensor) -> torch.Tensor:
    """absT_quaR_FoV: translation and quaternion linear, field of view through ReLU (positive)."""
    return torch.cat([enc[..., :7], F.relu(enc[..., 7:])], dim=-1)


def activate_points(x: torch.Tensor, kind: str) -> torch.Tensor:
    """x: [..., C] raw channels."""
    if kind == "exp":
        return torch.exp(x)
    if kind == "xy_exp":  # ray direction (x/z, y/z) times a positive depth
        xy, z = x.split([2, 1], dim=-1)
        z = torch.exp(z)
        return torch.cat([xy * z, z], dim=-1)
    if kind == "sigmoid_exp":  # novel views: colour in (0, 1), then a positive depth
        rgb, depth = x.split([x.shape[-1] - 1, 1], dim=-1)
        return torch.cat([torch.sigmoid(rgb), torch.exp(depth)], dim=-1)
    if kind == "linear":
        return x
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation {kind!r}")


def activate_confidence(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "expp1":
        return 1 + x.exp()
    if kind == "expp0":
        return x.exp()
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown confidence activation {kind!r}")
