"""2D rotary position embedding over the patch grid.

Half of each head's channels rotate with the patch row, the other half with the column. Special
tokens (camera, registers) sit at position (0, 0) and patches start at (1, 1), so special tokens
are never rotated.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int, device=None) -> torch.Tensor:
    """Integer (row, col) position of every token of a frame: [batch, num_special + h*w, 2]."""
    rows = torch.arange(grid_h, device=device)
    cols = torch.arange(grid_w, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid]).unsqueeze(0).expand(batch, -1, -1)


class RopeTables(NamedTuple):
    """cos and sin of every token's rotation angles, [B or 1, 1, N, head_dim] float32: the row
    angles in the first half of the channels, the column angles in the second."""

    cos: torch.Tensor
    sin: torch.Tensor

    def repeat_tokens(self, times: int) -> RopeTables:
        return RopeTables(*(t.repeat(1, 1, times, 1) for t in self))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryPositionEmbedding2D(nn.Module):
    """The angles depend on the positions alone, so `tables` computes their cos/sin once per
    forward pass (outside the compiled blocks: inlined, the sines and cosines were recomputed for
    every element of q and k of every frame, and made the rotation compute-bound)."""

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = frequency

    def _angles(self, pos: torch.Tensor, dim: int) -> torch.Tensor:
        """pos [B, N] -> angles [B, 1, N, dim] (each frequency twice, for `_rotate_half`)."""
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=pos.device).float() / dim))
        angles = pos.float()[..., None] * inv_freq
        return torch.cat((angles, angles), dim=-1)[:, None]

    def tables(self, pos: torch.Tensor, head_dim: int) -> RopeTables:
        """pos: [B or 1, N, 2] integer (row, col) -> the tables `forward` reads."""
        half = head_dim // 2
        angles = torch.cat((self._angles(pos[..., 0], half), self._angles(pos[..., 1], half)), dim=-1)
        return RopeTables(angles.cos(), angles.sin())

    def forward(self, x: torch.Tensor, tables: RopeTables, inverse: bool = False) -> torch.Tensor:
        """x: [B, heads, N, head_dim]."""
        return rotate(x, tables, inverse)


def rotate(x: torch.Tensor, tables: RopeTables, inverse: bool = False) -> torch.Tensor:
    """x [..., N, head_dim] rotated by the tables' angles (broadcast over the leading dims);
    `inverse` rotates back by the same angles."""
    rows, cols = x.chunk(2, dim=-1)
    rotated = torch.cat((_rotate_half(rows), _rotate_half(cols)), dim=-1)
    sin = tables.sin.to(x.dtype)
    return x * tables.cos.to(x.dtype) + rotated * (-sin if inverse else sin)
