"""Lambertian shading with one directional light plus ambient: view-independent by design, so
the colour of a surface point is the same in every frame."""

from __future__ import annotations

import torch
from torch import Tensor

from .primitives import Scene
from .raycast import Hits
from .textures import albedo


def shade(scene: Scene, hits: Hits, dirs: Tensor, hit_mask: Tensor) -> Tensor:
    """Linear colours [N, 3] in [0, 1]: shaded surfaces where `hit_mask`, sky elsewhere."""
    colour = sky(scene, dirs)
    rows = torch.nonzero(hit_mask).squeeze(-1)
    if rows.numel() == 0:
        return colour
    normal = hits.normal[rows]
    facing = torch.where((normal * dirs[rows]).sum(-1, keepdim=True) > 0, -normal, normal)
    light = (facing @ scene.light_dir).clamp_min(0.0)
    intensity = scene.ambient + (1.0 - scene.ambient) * light
    surface = albedo(scene.materials, hits.material[rows], hits.local[rows])
    colour[rows] = surface * intensity[:, None]
    return colour


def sky(scene: Scene, dirs: Tensor) -> Tensor:
    """A vertical gradient from the horizon colour to the zenith colour."""
    elevation = torch.nn.functional.normalize(dirs, dim=-1)[:, 2].clamp(0.0, 1.0).sqrt()
    return torch.lerp(scene.sky_horizon.expand_as(dirs), scene.sky_zenith.expand_as(dirs), elevation[:, None])
