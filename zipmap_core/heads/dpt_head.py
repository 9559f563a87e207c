"""DPT dense head: tokens of four aggregator layers -> a per-pixel map (depth, local points).

Each layer's patch tokens are reassembled into a feature map at 1/4, 1/8, 1/16 and 1/32 of the
patch grid's pixel resolution (x4, x2, x1, x0.5 of the grid), fused coarse to fine, upsampled to
the image size and decoded by small convolutions. Frames are independent, so a head can run on
any subset of frames (the chunked engine relies on this).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zipmap_core.heads.activations import activate_confidence, activate_points

_POS_CACHE_SIZE = 16
# Per layer, whether `project_layer` already resizes it and applies its layer{i}_rn convolution:
# the three steps (projection, resize, 3x3 conv to `features` channels) are per frame, and an
# engine that keeps the heads' inputs of long sequences stores the smallest of the forms. With the
# full-size head (out_channels 256/512/1024/1024, features 256) that is layers 1 and 2 as projected
# (resizing enlarges them x16 and x4) and layers 3 and 4 after their conv (256 channels at the grid
# and at half the grid, instead of 1024 each): at 392x518 (grid 28x37) 1,128,960 values a frame
# instead of the projections' 2,917,376 (0.39x).
REASSEMBLED_EARLY = (False, False, True, True)


def _upsample(x: torch.Tensor, size=None, scale_factor=None) -> torch.Tensor:
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=True)


def _sincos(dim: int, pos: torch.Tensor, omega_0: float = 100.0) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    angles = torch.outer(pos.reshape(-1).double(), 1.0 / omega_0**omega)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def uv_position_embedding(channels: int, grid_h: int, grid_w: int, aspect: float, device) -> torch.Tensor:
    """Sin-cos embedding [channels, h, w] of normalised image coordinates (diagonal = 1)."""
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (grid_w - 1) / grid_w, span_x * (grid_w - 1) / grid_w, grid_w, device=device)
    ys = torch.linspace(-span_y * (grid_h - 1) / grid_h, span_y * (grid_h - 1) / grid_h, grid_h, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")  # [h, w]
    emb = torch.cat([_sincos(channels // 2, uu), _sincos(channels // 2, vv)], dim=-1)
    return emb.reshape(grid_h, grid_w, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit. The skip carries relu(x), not x: the published weights were
    trained with an in-place ReLU that overwrote the block input, and we keep that function."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FusionBlock(nn.Module):
    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = _upsample(x, size=size) if size is not None else _upsample(x, scale_factor=2)
        return self.out_conv(x)


class Scratch(nn.Module):
    def __init__(self, in_channels, features: int, hidden: int, output_dim: int):
        super().__init__()
        for i, c in enumerate(in_channels, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        self.refinenet1 = FusionBlock(features)
        self.refinenet2 = FusionBlock(features)
        self.refinenet3 = FusionBlock(features)
        self.refinenet4 = FusionBlock(features, has_skip=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, output_dim, 1)
        )

    def fuse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: the four layers after their layer{i}_rn convolution (`features` channels)."""
        l1, l2, l3, l4 = feats
        x = self.refinenet4(l4, size=l3.shape[2:])
        x = self.refinenet3(x, l3, size=l2.shape[2:])
        x = self.refinenet2(x, l2, size=l1.shape[2:])
        x = self.refinenet1(x, l1)
        return self.output_conv1(x)


class DPTHead(nn.Module):
    def __init__(
        self,
        dim_in: int,
        output_dim: int,
        activation: str,
        conf_activation: str | None,
        patch_size: int = 14,
        features: int = 256,
        out_channels=(256, 512, 1024, 1024),
        hidden: int = 32,
        pos_embed: bool = True,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.pos_embed = pos_embed
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, c, 1) for c in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),
            ]
        )
        self.scratch = Scratch(out_channels, features, hidden, output_dim)
        self.reassembled_early = REASSEMBLED_EARLY  # (False,) * 4: the projections as they were stored before
        self.channels_last = False  # set by the fast path, whose convolutions run channels-last in bf16
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @torch.compiler.disable
    def _position_embedding(self, channels: int, h: int, w: int, aspect: float, dtype, device) -> torch.Tensor | None:
        """uv_position_embedding, computed once per size (None without position embedding): at
        full image resolution its float64 sines and cosines cost more than the convolution they
        feed (and compiled, they were recomputed for every frame). Callers fetch it before any
        tensor work, so that the compiled graph around it is not split and the add fuses."""
        if not self.pos_embed:
            return None
        key = (channels, h, w, aspect, dtype, device)
        if key not in self._pos_cache:
            if len(self._pos_cache) >= _POS_CACHE_SIZE:  # a few image sizes at most (5 entries each)
                self._pos_cache.pop(next(iter(self._pos_cache)))
            self._pos_cache[key] = uv_position_embedding(channels, h, w, aspect, device).to(dtype)
        return self._pos_cache[key]

    def project_layer(
        self, i: int, tokens: torch.Tensor, image_hw: tuple[int, int], patch_start_idx: int
    ) -> torch.Tensor:
        """First stage, per aggregator layer: tokens [B, S, P, dim_in] -> [B*S, C, h, w], the
        smallest per-frame form of that layer on the way to `decode` (see `REASSEMBLED_EARLY`). It is
        all the head needs of that layer, so an engine can keep this instead of the tokens."""
        H, W = image_hw
        gh, gw = H // self.patch_size, W // self.patch_size
        project = self.projects[i]
        pos = self._position_embedding(project.out_channels, gh, gw, W / H, project.weight.dtype, tokens.device)
        B, S = tokens.shape[:2]
        x = self.norm(tokens[:, :, patch_start_idx:].reshape(B * S, gh * gw, -1))
        x = project(x.transpose(1, 2).reshape(B * S, -1, gh, gw))
        x = x if pos is None else x + 0.1 * pos
        return self._reassemble(i, x) if self.reassembled_early[i] else x

    def _reassemble(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Layer i's projection -> its resolution (x4, x2, x1, x0.5 of the grid) -> `features` channels."""
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return getattr(self.scratch, f"layer{i + 1}_rn")(self.resize_layers[i](x.contiguous(memory_format=layout)))

    def projected_shape(self, i: int, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        """(channels, h, w) of one frame's `project_layer(i, ...)` output."""
        gh, gw = image_hw[0] // self.patch_size, image_hw[1] // self.patch_size
        if not self.reassembled_early[i]:
            return self.projects[i].out_channels, gh, gw
        resize = self.resize_layers[i]  # the identity or a stride-2 3x3 convolution (padding 1)
        stride = resize.stride[0] if isinstance(resize, nn.Conv2d) else 1
        return getattr(self.scratch, f"layer{i + 1}_rn").out_channels, -(-gh // stride), -(-gw // stride)

    def decode(
        self, projected: list[torch.Tensor], image_hw: tuple[int, int], batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Second stage: the four `project_layer` outputs -> (map [B, S, H, W, C], conf [B, S, H, W] or None)."""
        H, W = image_hw
        gh, gw = H // self.patch_size, W // self.patch_size
        size = (gh * self.patch_size, gw * self.patch_size)
        fused = self.scratch.output_conv1
        pos = self._position_embedding(fused.out_channels, *size, W / H, fused.weight.dtype, projected[0].device)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        feats = [
            x.contiguous(memory_format=layout) if early else self._reassemble(i, x)
            for i, (x, early) in enumerate(zip(projected, self.reassembled_early))
        ]
        x = _upsample(self.scratch.fuse(feats), size=size)
        conv, relu, last = self.scratch.output_conv2
        x = relu(conv(x if pos is None else x + 0.1 * pos))
        x = last(x.to(last.weight.dtype))  # the fast path keeps this tiny conv (and the activations) in float32
        x = x.permute(0, 2, 3, 1).reshape(batch, -1, x.shape[2], x.shape[3], x.shape[1])
        if self.conf_activation is None:
            return activate_points(x, self.activation), None
        return activate_points(x[..., :-1], self.activation), activate_confidence(x[..., -1], self.conf_activation)

    def forward(
        self, layer_tokens: list[torch.Tensor], image_hw: tuple[int, int], patch_start_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """layer_tokens: 4 tensors [B, S, P, dim_in] -> (map [B, S, H, W, C], conf [B, S, H, W] or None)."""
        projected = [self.project_layer(i, t, image_hw, patch_start_idx) for i, t in enumerate(layer_tokens)]
        return self.decode(projected, image_hw, layer_tokens[0].shape[0])
