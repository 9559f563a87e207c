"""Image (or any per-pixel map, e.g. ray conditions) to patch tokens with one strided convolution,
and the fixed absolute position code a conv patch embed can add to them."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None  # the ray patch embed's LayerNorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)*(W/p), D] (row-major patches)"""
        x = self.proj(x).flatten(2).transpose(1, 2)
        return x if self.norm is None else self.norm(x)


def sincos_positions(grid_h: int, grid_w: int, dim: int, frequency: float = 100.0, device=None) -> torch.Tensor:
    """A fixed 2D sin-cos code of each patch's position [grid_h * grid_w, dim] (row-major).

    Positions are in patch units from the image centre (the principal point), so a patch at a
    given angle from the optical axis gets the same code whatever the crop. Half the channels code
    the row, half the column, at frequencies 1 .. 1/frequency per patch (RoPE's range). A conv
    patch embed has no position of its own: without one, no patch token knows where it is, and
    relative camera motion (how far content moved between frames) cannot be read off the tokens.
    """
    if dim % 4:
        raise ValueError(f"sin-cos positions need a dimension divisible by 4, got {dim}")
    quarter = dim // 4
    inv_freq = 1.0 / (frequency ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    rows = torch.arange(grid_h, device=device, dtype=torch.float32) - (grid_h - 1) / 2
    cols = torch.arange(grid_w, device=device, dtype=torch.float32) - (grid_w - 1) / 2
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    angles = [x.reshape(-1, 1) * inv_freq for x in (r, c)]
    return torch.cat([f(x) for x in angles for f in (torch.sin, torch.cos)], dim=-1)
