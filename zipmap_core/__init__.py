"""zipmap_core: a faithful PyTorch ZipMap (CVPR 2026) with offline, chunked and streaming engines.

The small API the pipeline (and any other caller) uses:

    from zipmap_core import ModelConfig, ZipMap, load_checkpoint, load_images, reconstruct, EngineConfig

    model = load_checkpoint(ZipMap(ModelConfig.preset("offline_affine")), "s3://bucket/checkpoint_aff_inv.pt")
    images = load_images(["frame_000.png", "frame_001.png"], size=518)
    for frame in reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=32), device="cuda"):
        frame.extrinsic, frame.intrinsic, frame.depth, frame.depth_conf, frame.world_points
"""

from zipmap_core.checkpoint import CheckpointError, load_checkpoint, load_state_dict, save_checkpoint
from zipmap_core.config import ModelConfig
from zipmap_core.engines import EngineConfig, FramePrediction, StreamingSession, reconstruct
from zipmap_core.images import ImageLoadError, load_images, preprocess_images
from zipmap_core.models.zipmap import ZipMap

__all__ = [
    "CheckpointError",
    "EngineConfig",
    "FramePrediction",
    "ImageLoadError",
    "ModelConfig",
    "StreamingSession",
    "ZipMap",
    "load_checkpoint",
    "load_images",
    "load_state_dict",
    "preprocess_images",
    "reconstruct",
    "save_checkpoint",
]
