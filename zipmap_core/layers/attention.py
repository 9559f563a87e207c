"""Multi-head self-attention with optional per-head QK LayerNorm and 2D RoPE.

With `value_rope` the values are rotated too (by their key's position) and the output is rotated
back by the query's: a value then arrives rotated by where its token sits relative to the query,
so the output carries how far matched content moved, which attention over plain values cannot
express linearly (the camera motion of a frame is that displacement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zipmap_core.layers.rope import RopeTables, RotaryPositionEmbedding2D


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        value_rope: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope
        self.value_rope = value_rope

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and rope is not None:
            q, k = self.rope(q, rope), self.rope(k, rope)
        rotate_values = self.value_rope and self.rope is not None and rope is not None
        if rotate_values:
            v = self.rope(v, rope)
        x = F.scaled_dot_product_attention(q, k, v)
        if rotate_values:  # each value arrives rotated by its key's position relative to the query's
            x = self.rope(x, rope, inverse=True)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))
