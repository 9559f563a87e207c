"""ZipMap: aggregator + camera head + DPT depth and local-point heads."""

from __future__ import annotations

import torch
from torch import nn

from zipmap_core.config import ModelConfig
from zipmap_core.heads.camera_head import CameraHead, CameraMLPHead
from zipmap_core.heads.dpt_head import DPTHead
from zipmap_core.layers.ttt import TTTOp, TTTState
from zipmap_core.models.aggregator import Aggregator


class ZipMap(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.aggregator = Aggregator(config)
        dim = 2 * config.embed_dim
        if config.camera_head == "transformer":
            self.camera_head = CameraHead(
                dim, config.camera_trunk_depth, config.camera_num_heads, init_values=config.layer_scale_init
            )
        else:
            self.camera_mlp_head = CameraMLPHead(dim)
        dpt = dict(
            dim_in=dim, patch_size=config.patch_size, features=config.dpt.features,
            out_channels=config.dpt.out_channels, hidden=config.dpt.hidden, pos_embed=config.dpt.pos_embed,
        )
        if config.enable_local_points:
            self.local_point_head = DPTHead(output_dim=3, activation="xy_exp", conf_activation=None, **dpt)
        if config.enable_depth:
            self.depth_head = DPTHead(output_dim=2, activation="exp", conf_activation="expp1", **dpt)

    @property
    def pose_head(self) -> nn.Module:
        return self.camera_head if self.config.camera_head == "transformer" else self.camera_mlp_head

    def predict_cameras(self, last_layer: torch.Tensor) -> torch.Tensor:
        """Last aggregator layer [B, S, P, 2C] (all frames) -> pose encoding [B, S, 9]."""
        with torch.autocast(last_layer.device.type, enabled=False):
            return self.pose_head(last_layer[:, :, 0].float(), self.config.camera_iterations)[-1]

    def predict_dense(
        self,
        layers: dict[int, torch.Tensor],
        image_hw: tuple[int, int],
        frames_per_pass: int = 8,
        local_points: bool = True,
    ) -> dict[str, torch.Tensor]:
        """DPT heads on any subset of frames: {layer: [B, S, P, 2C]} -> dense maps.

        The heads run in float32 at full image resolution, so frames go through them a few at a
        time: peak memory then depends on `frames_per_pass`, not on the sequence length.
        """
        S = next(iter(layers.values())).shape[1]
        start = self.config.patch_start_idx
        parts: dict[str, list[torch.Tensor]] = {}
        for s in range(0, S, frames_per_pass):
            tokens = [layers[i][:, s : s + frames_per_pass].float() for i in self.config.dpt.layers]
            with torch.autocast(tokens[0].device.type, enabled=False):
                if self.config.enable_depth:
                    depth, conf = self.depth_head(tokens, image_hw, start)
                    parts.setdefault("depth", []).append(depth)
                    parts.setdefault("depth_conf", []).append(conf)
                if local_points and self.config.enable_local_points:
                    parts.setdefault("local_points", []).append(self.local_point_head(tokens, image_hw, start)[0])
        return {name: torch.cat(chunks, dim=1) for name, chunks in parts.items()}

    def forward(
        self,
        images: torch.Tensor,
        schedule: list[TTTOp] | None = None,
        states: list[TTTState] | None = None,
        first_frame: int = 0,
        local_points: bool = True,
    ) -> dict:
        """images [S, 3, H, W] or [B, S, 3, H, W] in [0, 1].

        Returns pose_enc [B, S, 9], depth [B, S, H, W, 1], depth_conf [B, S, H, W],
        local_points [B, S, H, W, 3] and the fast-weight `states` (to continue a stream).
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B, S, 3, H, W], got {tuple(images.shape)}")
        layers, states = self.aggregator(images, schedule, states, first_frame)
        out = {"pose_enc": self.predict_cameras(layers[self.config.depth - 1])}
        out.update(self.predict_dense(layers, images.shape[-2:], local_points=local_points))
        out["states"] = states
        return out
