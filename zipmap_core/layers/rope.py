"""2D rotary position embedding over the patch grid.

Half of each head's channels rotate with the patch row, the other half with the column. Special
tokens (camera, registers) sit at position (0, 0) and patches start at (1, 1), so special tokens
are never rotated.
"""

from __future__ import annotations

import torch
from torch import nn


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int, device=None) -> torch.Tensor:
    """Integer (row, col) position of every token of a frame: [batch, num_special + h*w, 2]."""
    rows = torch.arange(grid_h, device=device)
    cols = torch.arange(grid_w, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid]).unsqueeze(0).expand(batch, -1, -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryPositionEmbedding2D(nn.Module):
    """Positions may broadcast over the batch ([1, N, 2] for N tokens shared by every frame): the
    rotation angles are computed from them directly, so no host sync and no per-frame tables."""

    def __init__(self, frequency: float = 100.0):
        super().__init__()
        self.frequency = frequency

    def _cos_sin(self, pos: torch.Tensor, dim: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """pos [B, N] -> cos, sin [B, 1, N, dim] (each frequency twice, for `_rotate_half`)."""
        inv_freq = 1.0 / (self.frequency ** (torch.arange(0, dim, 2, device=pos.device).float() / dim))
        angles = pos.float()[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def _rotate_1d(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cos, sin = self._cos_sin(pos, x.shape[-1], x.dtype)
        return x * cos + _rotate_half(x) * sin

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: [B, heads, N, head_dim]; pos: [B or 1, N, 2] integer (row, col)."""
        rows, cols = x.chunk(2, dim=-1)
        return torch.cat((self._rotate_1d(rows, pos[..., 0]), self._rotate_1d(cols, pos[..., 1])), dim=-1)
