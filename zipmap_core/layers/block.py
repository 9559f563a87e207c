"""Pre-norm transformer blocks: attention (frame, global, ViT, camera trunk) and TTT (global)."""

from __future__ import annotations

import torch
from torch import nn

from zipmap_core.layers.attention import Attention
from zipmap_core.layers.mlp import LayerScale, Mlp
from zipmap_core.layers.rope import RopeTables, RotaryPositionEmbedding2D
from zipmap_core.layers.ttt import FastWeightSwiGLU, TTTOp, TTTState


def _layer_scale(dim: int, init_value: float | None) -> nn.Module:
    return LayerScale(dim, init_value) if init_value else nn.Identity()


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        init_values: float | None = None,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
        norm_eps: float = 1e-5,
        value_rope: bool = False,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, rope, value_rope)
        self.ls1 = _layer_scale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = _layer_scale(dim, init_values)

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class TTTBlock(nn.Module):
    """A global block whose token mixer is a test-time-trained fast-weight MLP.

    The mixer's update/apply steps are exposed so that engines can run them over chunks of frames;
    `forward` runs a whole schedule at once.
    """

    def __init__(self, dim: int, mlp_ratio: float, ffn_bias: bool, init_values: float | None, ttt: FastWeightSwiGLU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.ttt_block = ttt
        self.ls1 = _layer_scale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = _layer_scale(dim, init_values)

    def mixer_input(self, x: torch.Tensor) -> torch.Tensor:
        """norm1(x), in the mixer's weight dtype (bf16 on the fast path): all its consumers are
        linear layers, which autocast would feed bf16 anyway, so one cast here halves the bytes
        that the norm writes and that every consumer reads."""
        return self.norm1(x).to(self.ttt_block.to_qkv.weight.dtype)

    def finish(self, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """Residual around the mixer output, then the MLP half of the block."""
        x = x + self.ls1(mixed)
        return x + self.ls2(self.mlp(self.norm2(x)))

    def apply(self, x: torch.Tensor, state: TTTState, value_rope: RopeTables | None = None) -> torch.Tensor:
        """The block with trained fast weights, read only: x [B, L, dim] -> [B, L, dim]. Every
        token is independent of the others here, so any split of the tokens gives the same result.
        Only the queries are projected (keys, values and learning rates would go unused)."""
        xn = self.mixer_input(x)
        ttt = self.ttt_block
        return self.finish(x, ttt.output(ttt.read(state, ttt.query(xn)), xn, value_rope))

    def forward(
        self,
        x: torch.Tensor,
        schedule: list[TTTOp],
        state: TTTState | None = None,
        value_rope: RopeTables | None = None,
    ) -> tuple[torch.Tensor, TTTState]:
        """`value_rope`: rotation tables of x's tokens for a mixer that rotates its values."""
        mixed, state = self.ttt_block(self.mixer_input(x), schedule, state, value_rope)
        return self.finish(x, mixed), state
