"""ZipMap: aggregator + camera head + DPT depth and local-point heads (+ the novel-view head of
the state-query model, which renders query cameras from a sequence's fast weights)."""

from __future__ import annotations

import torch
from torch import nn

from zipmap_core.config import ModelConfig
from zipmap_core.heads.camera_head import CameraHead, CameraMLPHead
from zipmap_core.heads.dpt_head import DPTHead
from zipmap_core.layers.ttt import TTTOp, TTTState
from zipmap_core.models.aggregator import Aggregator


def head_dtype(head: nn.Module) -> torch.dtype:
    """The dtype a dense head runs in (float32, or bf16/fp16 on the fast path)."""
    return head.norm.weight.dtype


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
        dpt = {
            "dim_in": dim, "patch_size": config.patch_size, "features": config.dpt.features,
            "out_channels": config.dpt.out_channels, "hidden": config.dpt.hidden, "pos_embed": config.dpt.pos_embed,
        }
        if config.enable_local_points:
            self.local_point_head = DPTHead(output_dim=3, activation="xy_exp", conf_activation=None, **dpt)
        if config.enable_depth:
            self.depth_head = DPTHead(output_dim=2, activation="exp", conf_activation="expp1", **dpt)
        if config.enable_nvs:  # RGB (sigmoid), depth (exp), confidence (1 + exp)
            self.nvs_head = DPTHead(output_dim=5, activation="sigmoid_exp", conf_activation="expp1", **dpt)

    @property
    def pose_head(self) -> nn.Module:
        return self.camera_head if self.config.camera_head == "transformer" else self.camera_mlp_head

    def predict_cameras(self, last_layer: torch.Tensor) -> torch.Tensor:
        """Last aggregator layer [B, S, P, 2C] (all frames) -> pose encoding [B, S, 9]."""
        with torch.autocast(last_layer.device.type, enabled=False):
            return self.pose_head(last_layer[:, :, 0].float(), self.config.camera_iterations)[-1]

    def dense_heads(self, local_points: bool = True, nvs: bool = False) -> dict[str, DPTHead]:
        """The DPT heads of input frames (and, with `nvs`, the novel-view head of query views)."""
        heads = {}
        if self.config.enable_depth:
            heads["depth"] = self.depth_head
        if local_points and self.config.enable_local_points:
            heads["local_points"] = self.local_point_head
        if nvs and self.config.enable_nvs:
            heads["nvs"] = self.nvs_head
        return heads

    def project_for_heads(
        self, layer: int, tokens: torch.Tensor, image_hw: tuple[int, int], local_points: bool = True
    ) -> dict[str, torch.Tensor]:
        """First stage of each dense head on one DPT layer's tokens [B, S, P, 2C], in the head's
        weight dtype (float32, or bf16 on the fast path) with autocast off."""
        k = self.config.dpt.layers.index(layer)
        start = self.config.patch_start_idx
        with torch.autocast(tokens.device.type, enabled=False):
            return {
                name: head.project_layer(k, tokens.to(head_dtype(head)), image_hw, start)
                for name, head in self.dense_heads(local_points).items()
            }

    def decode_dense(
        self, projected: dict[str, list[torch.Tensor]], image_hw: tuple[int, int], frames_per_pass: int = 16
    ) -> dict[str, torch.Tensor]:
        """Second stage of the dense heads, a few frames at a time: the heads run at full image
        resolution, so peak memory depends on `frames_per_pass`, not on the sequence.

        projected: {head: 4 tensors [S, C_i, h, w]} -> {"depth": [1, S, H, W, 1], "depth_conf": ..., ...}
        """
        parts: dict[str, list[torch.Tensor]] = {}
        S = next(iter(projected.values()))[0].shape[0]
        for s in range(0, S, frames_per_pass):
            for name, feats in projected.items():
                head = self.dense_heads()[name]
                with torch.autocast(feats[0].device.type, enabled=False):
                    dtype = head_dtype(head)
                    value, conf = head.decode([f[s : s + frames_per_pass].to(dtype) for f in feats], image_hw, 1)
                parts.setdefault(name, []).append(value)
                if conf is not None:
                    parts.setdefault(name + "_conf", []).append(conf)
        return {name: torch.cat(chunks, dim=1) for name, chunks in parts.items()}

    def predict_dense(
        self,
        layers: dict[int, torch.Tensor],
        image_hw: tuple[int, int],
        frames_per_pass: int = 16,
        local_points: bool = True,
    ) -> dict[str, torch.Tensor]:
        """DPT heads on any subset of frames: {layer: [1, S, P, 2C]} -> dense maps [1, S, ...]."""
        S = next(iter(layers.values())).shape[1]
        parts: dict[str, list[torch.Tensor]] = {}
        for s in range(0, S, frames_per_pass):
            projected: dict[str, list[torch.Tensor]] = {}
            for i in self.config.dpt.layers:
                for name, x in self.project_for_heads(
                    i, layers[i][:, s : s + frames_per_pass], image_hw, local_points
                ).items():
                    projected.setdefault(name, []).append(x)
            for name, value in self.decode_dense(projected, image_hw, frames_per_pass).items():
                parts.setdefault(name, []).append(value)
        return {name: torch.cat(chunks, dim=1) for name, chunks in parts.items()}

    def predict_views(
        self, layers: dict[int, torch.Tensor], image_hw: tuple[int, int], views_per_pass: int = 16
    ) -> dict[str, torch.Tensor]:
        """The novel-view head on query views' DPT layers {layer: [B, K, P, 2C]} ->
        nvs_pred [B, K, H, W, 4] (R, G, B, depth) and nvs_depth_conf [B, K, H, W]."""
        head = self.nvs_head
        inputs = [layers[i] for i in self.config.dpt.layers]
        preds, confs = [], []
        for k in range(0, inputs[0].shape[1], views_per_pass):
            with torch.autocast(inputs[0].device.type, enabled=False):
                chunk = [x[:, k : k + views_per_pass].to(head_dtype(head)) for x in inputs]
                pred, conf = head(chunk, image_hw, self.config.patch_start_idx)
            preds.append(pred)
            confs.append(conf)
        return {"nvs_pred": torch.cat(preds, dim=1), "nvs_depth_conf": torch.cat(confs, dim=1)}

    def render(self, rays: torch.Tensor, states: list[TTTState]) -> dict[str, torch.Tensor]:
        """Novel views from a scene's stored fast weights alone (no input image): ray conditions
        [B, K, 9, H, W] (zipmap_core.rays) and one TTTState per global block (batch B) ->
        nvs_pred [B, K, H, W, 4] (R, G, B in (0, 1), depth) and nvs_depth_conf [B, K, H, W]."""
        if rays.dim() != 5 or rays.shape[2] != 9:
            raise ValueError(f"expected ray conditions [B, K, 9, H, W], got {tuple(rays.shape)}")
        return self.predict_views(self.aggregator.render(rays, states), tuple(rays.shape[-2:]))

    def forward(
        self,
        images: torch.Tensor,
        schedule: list[TTTOp] | None = None,
        states: list[TTTState] | None = None,
        first_frame: int = 0,
        local_points: bool = True,
        query_rays: torch.Tensor | None = None,
    ) -> dict:
        """images [S, 3, H, W] or [B, S, 3, H, W] in [0, 1].

        Returns pose_enc [B, S, 9], depth [B, S, H, W, 1], depth_conf [B, S, H, W],
        local_points [B, S, H, W, 3] and the fast-weight `states` (to continue a stream, or the
        scene state of a sequence). With `query_rays` [B, K, 9, H, W] (the released training path),
        also nvs_pred [B, K, H, W, 4] and nvs_depth_conf [B, K, H, W] for K query views answered
        from the input frames' fast weights, as `render` would from the returned states.
        """
        if images.dim() == 4:
            images = images.unsqueeze(0)
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"expected images [B, S, 3, H, W], got {tuple(images.shape)}")
        if query_rays is not None and tuple(query_rays.shape[-2:]) != tuple(images.shape[-2:]):
            raise ValueError(f"query rays {tuple(query_rays.shape)} must have the images' size {tuple(images.shape)}")
        layers, states = self.aggregator(images, schedule, states, first_frame, query_rays)
        S, image_hw = images.shape[1], tuple(images.shape[-2:])
        inputs = {i: x[:, :S] for i, x in layers.items()}
        out = {"pose_enc": self.predict_cameras(inputs[self.config.depth - 1])}
        out.update(self.predict_dense(inputs, image_hw, local_points=local_points))
        if query_rays is not None:
            out.update(self.predict_views({i: layers[i][:, S:] for i in self.config.dpt.layers}, image_hw))
        out["states"] = states
        return out
