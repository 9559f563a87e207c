"""Typed model configuration, with named presets for the published checkpoints.

A config fully determines the state-dict layout of the model it builds, so a checkpoint and the
preset it was trained with always travel together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PatchEmbedKind = Literal[
    "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg", "dinov2_vitg2_reg", "conv"
]


class TTTConfig(BaseModel):
    """The fast-weight SwiGLU MLP that replaces global attention."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head_dim: int = 1024
    inter_multi: float = 2.0
    base_lr: float = 0.01
    muon_steps: int = 5
    bias: bool = True
    use_gate: bool = True


class DPTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    layers: tuple[int, int, int, int] = (4, 11, 17, 23)
    hidden: int = 32  # channels of the last 3x3 conv before the output 1x1 conv
    pos_embed: bool = True


class ModelConfig(BaseModel):
    """Everything that shapes a ZipMap network.

    `global_block="attention"` builds the same network with full global attention (the VGGT
    architecture), which is the quadratic baseline.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    img_size: int = 518
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    patch_embed: PatchEmbedKind = "dinov2_vitl14_reg"
    # a fixed sin-cos code of each patch's position added to a conv patch embed (DINOv2 patch
    # embeds carry their own learned one); it has no weights, so the state dict is the same
    patch_positions: bool = False
    rope_freq: float = 100.0
    # global blocks also rotate their values by position and their outputs back (RoPE on values):
    # a token then reads how far the content it matched in other frames moved. An issue #19
    # experiment, without effect on the cameras so far (bench/exp/README.md). No
    # weights; a model trained with it must run with it
    value_rope: bool = False
    qk_norm: bool = True
    layer_scale_init: float = 0.01
    global_block: Literal["ttt", "attention"] = "ttt"
    # where cameras come from when EngineConfig.cameras is "auto": the camera head, or photometric
    # alignment with the predicted depth (zipmap_core/photometric.py) for models whose depth is
    # better than their camera head (the bundled demo models). No weights
    cameras: Literal["network", "photometric"] = "network"
    ttt: TTTConfig = Field(default_factory=TTTConfig)
    affine_invariant: bool = False
    camera_head: Literal["transformer", "mlp"] = "transformer"
    camera_trunk_depth: int = 4
    camera_num_heads: int = 16
    camera_iterations: int = 4
    dpt: DPTConfig = Field(default_factory=DPTConfig)
    enable_depth: bool = True
    enable_local_points: bool = True
    # the novel-view head of "ZipMap w/ state query": renders RGB and depth for query cameras
    # (ray conditions) from the fast weights a sequence left behind
    enable_nvs: bool = False
    streaming_window: int | None = None  # frames per TTT window for streaming models

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.global_block == "ttt" and self.embed_dim % self.ttt.head_dim:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by ttt.head_dim {self.ttt.head_dim}")
        if max(self.dpt.layers) >= self.depth:
            raise ValueError(f"dpt.layers {self.dpt.layers} must be < depth {self.depth}")
        if self.patch_positions and self.patch_embed != "conv":
            raise ValueError("patch_positions is for the conv patch embed (DINOv2 has its own positions)")
        if self.patch_positions and self.embed_dim % 4:
            raise ValueError(f"patch_positions needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.value_rope:
            head_dim = self.ttt.head_dim if self.global_block == "ttt" else self.embed_dim // self.num_heads
            if self.rope_freq <= 0 or head_dim % 4:
                raise ValueError(f"value_rope needs rope_freq > 0 and a global head dim divisible by 4, got {head_dim}")
        if self.patch_embed != "conv" and self.patch_size != 14:
            raise ValueError("DINOv2 patch embeds use patch_size 14")
        if self.enable_nvs and self.global_block != "ttt":
            raise ValueError("enable_nvs renders from TTT fast weights: it needs global_block='ttt'")
        if self.streaming_window is not None and self.streaming_window < 1:
            raise ValueError("streaming_window must be >= 1")
        return self

    @property
    def patch_start_idx(self) -> int:
        """Index of the first patch token: one camera token, then the register tokens."""
        return 1 + self.num_register_tokens

    @classmethod
    def preset(cls, name: str) -> ModelConfig:
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(PRESETS)


_FULL = dict(embed_dim=1024, depth=24, num_heads=16, patch_embed="dinov2_vitl14_reg")

# Variants below are derived with model_copy(update=...), so they differ from their base only in
# what the update names (model_copy does not re-validate: keep the updates to fields that cannot
# break _check, or validate the result).
_REFERENCE_DEV = ModelConfig(
    name="reference_dev",
    embed_dim=384,
    num_heads=6,
    patch_embed="dinov2_vits14_reg",
    ttt=TTTConfig(head_dim=384),
    affine_invariant=True,
)

_DEMO_TTT = ModelConfig(
    name="demo_ttt",
    img_size=224,
    embed_dim=96,
    depth=8,
    num_heads=4,
    patch_embed="conv",
    patch_positions=True,  # a conv embed knows no position of its own (bench/exp/README.md)
    layer_scale_init=1.0,  # the blocks change the tokens from the start (the trained files' recipe)
    cameras="photometric",  # its camera head has not learnt poses, its depth has (assets/README.md)
    ttt=TTTConfig(head_dim=96),
    camera_trunk_depth=2,
    camera_num_heads=4,
    dpt=DPTConfig(features=48, out_channels=(24, 48, 96, 96), layers=(1, 3, 5, 7), hidden=16),
)

PRESETS: dict[str, ModelConfig] = {
    # checkpoint_with_ref_view.pt: the first frame is the reference view
    "offline_ref_view": ModelConfig(name="offline_ref_view", **_FULL),
    # checkpoint_aff_inv.pt: one camera/register token for every frame
    "offline_affine": ModelConfig(name="offline_affine", affine_invariant=True, **_FULL),
    # checkpoint_online.pt: MLP camera head, windowed TTT updates
    "streaming": ModelConfig(
        name="streaming", affine_invariant=True, camera_head="mlp", streaming_window=1, **_FULL
    ),
    # the small model of ../shared/reference (ViT-S patch embed, single-head TTT of 384)
    "reference_dev": _REFERENCE_DEV,
    # its streaming variant: MLP camera head, TTT windows of 2 frames
    "reference_dev_streaming": _REFERENCE_DEV.model_copy(
        update={"name": "reference_dev_streaming", "camera_head": "mlp", "streaming_window": 2}
    ),
    # a few-MB network for CPU tests and the pipeline's own tests
    "tiny": ModelConfig(
        name="tiny",
        img_size=112,
        embed_dim=32,
        depth=4,
        num_heads=2,
        patch_embed="conv",
        ttt=TTTConfig(head_dim=32),
        camera_trunk_depth=1,
        camera_num_heads=2,
        dpt=DPTConfig(features=16, out_channels=(8, 16, 32, 32), layers=(0, 1, 2, 3), hidden=8),
    ),
    # the embedded demo model (zipmap_core/assets/demo_ttt.safetensors): trains in minutes on one
    # GPU, runs on a CPU in seconds, and stays under 10 MB in float16
    "demo_ttt": _DEMO_TTT,
    # the same network with full global attention: the quadratic (VGGT) baseline of demo_ttt
    # (zipmap_core/assets/demo_attention.safetensors)
    "demo_attention": _DEMO_TTT.model_copy(update={"name": "demo_attention", "global_block": "attention"}),
}

# State query: "ZipMap w/ state query" (checkpoint_state_query.pt, fine-tuned from the
# reference-view model) is the offline layout plus ray tokens and the novel-view head.
PRESETS["state_query"] = ModelConfig(name="state_query", enable_nvs=True, **_FULL)
# the reference's dev-size state-query case (reference-view mode)
PRESETS["reference_dev_state_query"] = _REFERENCE_DEV.model_copy(
    update={"name": "reference_dev_state_query", "affine_invariant": False, "enable_nvs": True}
)
# tiny with the novel-view head, for CPU tests of scene states and rendering
PRESETS["tiny_state_query"] = PRESETS["tiny"].model_copy(update={"name": "tiny_state_query", "enable_nvs": True})
