"""zipmap_core: a faithful PyTorch ZipMap (CVPR 2026) with offline, chunked and streaming engines.

The small API the pipeline (and any other caller) uses:

    from zipmap_core import ModelConfig, ZipMap, load_checkpoint, load_images, reconstruct, EngineConfig

    model = load_checkpoint(ZipMap(ModelConfig.preset("offline_affine")), "s3://bucket/checkpoint_aff_inv.pt")
    images = load_images(["frame_000.png", "frame_001.png"], size=518)
    for frame in reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=32), device="cuda"):
        frame.extrinsic, frame.intrinsic, frame.depth, frame.depth_conf, frame.world_points
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> module; loaded on first use, so that light parts (configs, FramePrediction) do not
# import torch
_EXPORTS = {
    "CheckpointError": "zipmap_core.checkpoint",
    "load_checkpoint": "zipmap_core.checkpoint",
    "load_state_dict": "zipmap_core.checkpoint",
    "save_checkpoint": "zipmap_core.checkpoint",
    "ModelConfig": "zipmap_core.config",
    "EngineConfig": "zipmap_core.engines",
    "FramePrediction": "zipmap_core.engines",
    "StreamingSession": "zipmap_core.engines",
    "reconstruct": "zipmap_core.engines",
    "reconstruct_distributed": "zipmap_core.engines",
    "frame_shares": "zipmap_core.engines",
    "open_stream": "zipmap_core.engines",
    "ImageLoadError": "zipmap_core.images",
    "load_images": "zipmap_core.images",
    "preprocess_images": "zipmap_core.images",
    "ZipMap": "zipmap_core.models.zipmap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
