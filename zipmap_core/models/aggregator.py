"""The aggregator: per-frame patch embedding, then alternating frame and global blocks.

Frame blocks attend within each frame; global blocks mix all frames, either by full attention
(VGGT) or by a TTT fast-weight layer (ZipMap). Each frame carries a camera token and register
tokens ahead of its patch tokens. The per-step methods (`embed`, `frame_block`, ...) let engines
drive the network layer by layer over chunks of frames.
"""

from __future__ import annotations

import torch
from torch import nn

from zipmap_core.config import ModelConfig
from zipmap_core.layers.block import Block, TTTBlock
from zipmap_core.layers.patch_embed import PatchEmbed, sincos_positions
from zipmap_core.layers.rope import RopeTables, RotaryPositionEmbedding2D, patch_positions
from zipmap_core.layers.ttt import (
    FastWeightSwiGLU,
    TTTOp,
    TTTState,
    bidirectional_schedule,
    query_schedule,
)
from zipmap_core.layers.vision_transformer import DinoVisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RAY_CHANNELS = 9  # ray conditions per pixel: origin, direction, origin x direction


class Aggregator(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.embed_dim
        if cfg.patch_embed == "conv":
            self.patch_embed = PatchEmbed(cfg.patch_size, 3, C)
        else:
            self.patch_embed = DinoVisionTransformer.from_name(
                cfg.patch_embed, cfg.img_size, cfg.patch_size, cfg.num_register_tokens
            )
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq) if cfg.rope_freq > 0 else None
        block_args = {
            "dim": C,
            "num_heads": cfg.num_heads,
            "mlp_ratio": cfg.mlp_ratio,
            "init_values": cfg.layer_scale_init,
        }
        self.frame_blocks = nn.ModuleList(
            Block(**block_args, qk_norm=cfg.qk_norm, rope=self.rope) for _ in range(cfg.depth)
        )
        if cfg.global_block == "ttt":
            t = cfg.ttt
            self.global_blocks = nn.ModuleList(
                TTTBlock(
                    C, cfg.mlp_ratio, True, cfg.layer_scale_init,
                    FastWeightSwiGLU(C, t.head_dim, t.inter_multi, t.bias, t.base_lr, t.muon_steps, t.use_gate),
                )
                for _ in range(cfg.depth)
            )
        else:
            self.global_blocks = nn.ModuleList(
                Block(**block_args, qk_norm=cfg.qk_norm, rope=self.rope, value_rope=cfg.value_rope)
                for _ in range(cfg.depth)
            )
        if cfg.enable_nvs:
            # a query view is [5 ray_cond_tokens (in place of camera + register tokens), ray patch
            # tokens]; registered here so that the state-dict order is the published one
            self.ray_cond_token = nn.Parameter(torch.randn(1, 1, cfg.patch_start_idx, C) * 1e-6)
            self.ray_patch_embed = PatchEmbed(cfg.patch_size, RAY_CHANNELS, C, norm=True)
        # index 0: the first (reference) frame; index 1: every other frame
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, C) * 1e-6)
        self.register_buffer("_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def is_ttt(self) -> bool:
        return self.cfg.global_block == "ttt"

    @property
    def patch_start_idx(self) -> int:
        return self.cfg.patch_start_idx

    def _special_tokens(self, param: torch.Tensor, B: int, S: int, first_frame: int) -> torch.Tensor:
        """[B, S, n, C]: the reference token for global frame 0, the other token elsewhere."""
        is_ref = (torch.arange(S, device=param.device) + first_frame == 0) & (not self.cfg.affine_invariant)
        tokens = torch.where(is_ref.view(S, 1, 1), param[0, 0], param[0, 1])
        return tokens.unsqueeze(0).expand(B, -1, -1, -1)

    def embed(self, images: torch.Tensor, first_frame: int = 0) -> torch.Tensor:
        """images [B, S, 3, H, W] in [0, 1] -> tokens [B, S, P, C].

        `first_frame` is the global index of images[:, 0], so that a chunk knows whether it holds
        the reference frame.
        """
        B, S, _, H, W = images.shape
        x = ((images.reshape(B * S, 3, H, W) - self._mean) / self._std).to(images.dtype)
        patches = self.patch_embed(x).reshape(B, S, -1, self.cfg.embed_dim)
        if self.cfg.patch_positions:
            p = self.cfg.patch_size
            code = sincos_positions(H // p, W // p, self.cfg.embed_dim, self.cfg.rope_freq or 100.0, x.device)
            patches = patches + code.to(patches.dtype)
        cam = self._special_tokens(self.camera_token, B, S, first_frame).to(patches.dtype)
        reg = self._special_tokens(self.register_token, B, S, first_frame).to(patches.dtype)
        return torch.cat([cam, reg, patches], dim=2)

    def embed_rays(self, rays: torch.Tensor) -> torch.Tensor:
        """Ray conditions of query views [B, K, 9, H, W] -> tokens [B, K, P, C], laid out as an
        image's (special tokens, then patches) so that they run through the same blocks."""
        if not self.cfg.enable_nvs:
            raise ValueError(f"model {self.cfg.name!r} has no novel-view part (config enable_nvs=False)")
        B, K, _, H, W = rays.shape
        patches = self.ray_patch_embed(rays.reshape(B * K, -1, H, W)).reshape(B, K, -1, self.cfg.embed_dim)
        special = self.ray_cond_token.to(patches.dtype).expand(B, K, -1, -1)
        return torch.cat([special, patches], dim=2)

    def rope_tables(self, image_hw: tuple[int, int], device, head_dim: int | None = None) -> RopeTables | None:
        """RoPE rotations of one frame's tokens (shared by every frame), or None without RoPE;
        for the attention heads unless `head_dim` says otherwise."""
        if self.rope is None:
            return None
        p = self.cfg.patch_size
        pos = patch_positions(1, image_hw[0] // p, image_hw[1] // p, self.patch_start_idx, device)
        return self.rope.tables(pos, head_dim or self.cfg.embed_dim // self.cfg.num_heads)

    def value_rope_tables(self, image_hw: tuple[int, int], device) -> RopeTables | None:
        """One frame's rotations for the TTT global blocks' values (config `value_rope`), or None.
        Attention blocks rotate theirs with the `rope_tables`."""
        if not (self.cfg.value_rope and self.is_ttt):
            return None
        return self.rope_tables(image_hw, device, self.cfg.ttt.head_dim)

    def frame_block(self, i: int, tokens: torch.Tensor, rope: RopeTables | None) -> torch.Tensor:
        B, S, P, C = tokens.shape
        return self.frame_blocks[i](tokens.reshape(B * S, P, C), rope).reshape(B, S, P, C)

    def global_block(
        self,
        i: int,
        tokens: torch.Tensor,
        rope: RopeTables | None,
        schedule: list[TTTOp],
        state: TTTState | None = None,
        value_rope: RopeTables | None = None,
    ) -> tuple[torch.Tensor, TTTState | None]:
        """`value_rope`: `value_rope_tables` of one frame (TTT models with config value_rope)."""
        B, S, P, C = tokens.shape
        x = tokens.reshape(B, S * P, C)
        block = self.global_blocks[i]
        if self.is_ttt:
            x, state = block(x, schedule, state, None if value_rope is None else value_rope.repeat_tokens(S))
        else:
            x = block(x, None if rope is None else rope.repeat_tokens(S))
        return x.reshape(B, S, P, C), state

    def output_layers(self) -> list[int]:
        """Layers whose outputs the heads read: the DPT layers and the last one (camera)."""
        return sorted(set(self.cfg.dpt.layers) | {self.cfg.depth - 1})

    def forward(
        self,
        images: torch.Tensor,
        schedule: list[TTTOp] | None = None,
        states: list[TTTState] | None = None,
        first_frame: int = 0,
        query_rays: torch.Tensor | None = None,
    ) -> tuple[dict[int, torch.Tensor], list[TTTState | None]]:
        """-> ({layer: [B, S, P, 2C] frame+global outputs}, fast-weight state per global block).

        With `query_rays` [B, K, 9, H, W], K query views follow the S input frames (outputs then
        hold S + K views): the fast weights train on the input frames only and answer both."""
        tokens = self.embed(images, first_frame)
        if query_rays is not None:
            schedule = schedule or query_schedule(tokens.shape[1] * tokens.shape[2])
            tokens = torch.cat([tokens, self.embed_rays(query_rays).to(tokens.dtype)], dim=1)
        return self.run_blocks(tokens, images.shape[-2:], schedule or bidirectional_schedule(), states)

    def run_blocks(
        self,
        tokens: torch.Tensor,
        image_hw: tuple[int, int],
        schedule: list[TTTOp],
        states: list[TTTState] | None = None,
    ) -> tuple[dict[int, torch.Tensor], list[TTTState | None]]:
        """Tokens [B, S, P, C] through every frame and global block."""
        rope = self.rope_tables(image_hw, tokens.device)
        values = self.value_rope_tables(image_hw, tokens.device)
        keep = set(self.output_layers())
        outputs, new_states = {}, []
        for i in range(self.cfg.depth):
            frame_out = self.frame_block(i, tokens, rope)
            tokens, state = self.global_block(i, frame_out, rope, schedule, states[i] if states else None, values)
            new_states.append(state)
            if i in keep:
                outputs[i] = torch.cat([frame_out, tokens], dim=-1)
        return outputs, new_states

    def render(self, rays: torch.Tensor, states: list[TTTState]) -> dict[int, torch.Tensor]:
        """Query views [B, K, 9, H, W] read through stored fast weights (one state per global
        block, batch B, never updated) -> {DPT layer: [B, K, P, 2C]}. Views are independent of
        each other, so any grouping of views gives the same result."""
        if len(states) != self.cfg.depth:
            raise ValueError(f"a scene state of {len(states)} layers does not fit a model of depth {self.cfg.depth}")
        tokens = self.embed_rays(rays)
        rope = self.rope_tables(rays.shape[-2:], rays.device)
        values = self.value_rope_tables(rays.shape[-2:], rays.device)
        B, K, P, C = tokens.shape
        values = None if values is None else values.repeat_tokens(K)
        outputs = {}
        for i in range(max(self.cfg.dpt.layers) + 1):  # nothing after the last DPT layer is read
            frame_out = self.frame_block(i, tokens, rope)
            tokens = self.global_blocks[i].apply(frame_out.reshape(B, K * P, C), states[i], values).reshape(B, K, P, C)
            if i in self.cfg.dpt.layers:
                outputs[i] = torch.cat([frame_out, tokens], dim=-1)
        return outputs
