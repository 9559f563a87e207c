"""DINOv2 ViT with register tokens, used as the per-frame patch embedding.

Only what the aggregator needs: the normalised patch tokens of the last layer. The positional
embedding was learnt on a 37x37 grid (518 px) and is resampled bicubically for other sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zipmap_core.layers.block import Block
from zipmap_core.layers.patch_embed import PatchEmbed

# name -> (embed_dim, depth, num_heads)
VIT_SIZES = {
    "dinov2_vits14_reg": (384, 12, 6),
    "dinov2_vitb14_reg": (768, 12, 12),
    "dinov2_vitl14_reg": (1024, 24, 16),
    "dinov2_vitg2_reg": (1536, 40, 24),
}


class DinoVisionTransformer(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        img_size: int = 518,
        patch_size: int = 14,
        num_register_tokens: int = 4,
        mlp_ratio: float = 4.0,
        init_values: float = 1.0,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # unused at inference; kept so published checkpoints load strictly
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    @classmethod
    def from_name(cls, name: str, img_size: int, patch_size: int, num_register_tokens: int) -> DinoVisionTransformer:
        dim, depth, heads = VIT_SIZES[name]
        return cls(dim, depth, heads, img_size, patch_size, num_register_tokens)

    def _pos_embed_for(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        side = int(math.sqrt(patch_pos.shape[1]))
        if (grid_h, grid_w) != (side, side):
            patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised images -> normalised patch tokens [B, (H/14)*(W/14), D]."""
        B, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        x = x + self._pos_embed_for(H // self.patch_size, W // self.patch_size, x.dtype)
        x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
