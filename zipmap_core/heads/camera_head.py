"""Camera heads: camera token of the last layer -> pose encoding [B, S, 9] (absT_quaR_FoV)."""

from __future__ import annotations

import torch
from torch import nn

from zipmap_core.heads.activations import activate_pose
from zipmap_core.layers.block import Block
from zipmap_core.layers.mlp import Mlp

POSE_DIM = 9  # translation 3, quaternion (xyzw) 4, field of view (h, w) 2


class CameraHead(nn.Module):
    """Iterative refinement: a transformer trunk over the frames' camera tokens, modulated (adaLN)
    by an embedding of the current pose estimate, predicts a pose delta per iteration."""

    def __init__(self, dim_in: int, trunk_depth: int = 4, num_heads: int = 16, mlp_ratio: float = 4.0,
                 init_values: float = 0.01):
        super().__init__()
        self.trunk = nn.Sequential(
            *[Block(dim_in, num_heads, mlp_ratio, init_values=init_values) for _ in range(trunk_depth)]
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_DIM))
        self.embed_pose = nn.Linear(POSE_DIM, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, POSE_DIM)

    def forward(self, camera_tokens: torch.Tensor, iterations: int = 4) -> list[torch.Tensor]:
        """camera_tokens: [B, S, C] -> activated pose encodings of every iteration."""
        tokens = self.token_norm(camera_tokens)
        B, S, _ = tokens.shape
        raw = None
        outputs = []
        for _ in range(iterations):
            pose_in = self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(pose_in)).chunk(3, dim=-1)
            x = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            outputs.append(activate_pose(raw))
        return outputs


class CameraMLPHead(nn.Module):
    """Per-frame MLP on the camera token (streaming model: no attention across frames)."""

    def __init__(self, dim_in: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mlp = Mlp(dim_in, int(dim_in * mlp_ratio), POSE_DIM)

    def forward(self, camera_tokens: torch.Tensor, iterations: int = 1) -> list[torch.Tensor]:
        return [activate_pose(self.mlp(camera_tokens))]
