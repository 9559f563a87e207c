"""Inference engines: run a ZipMap model over a whole sequence and stream per-frame results.

    for frame in reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=32)):
        ...  # FramePrediction: cameras, depth, confidence, world points, colours

`images` is [S, 3, H, W] in [0, 1] (see zipmap_core.images.load_images). Frames come out in
order; the offline engine yields them after one forward pass, the chunked engine as each chunk's
heads finish, the streaming engine after each window. `reconstruct_distributed` spreads one
chunked sequence over the processes of a torch.distributed group (frame_parallel.py);
`open_stream` returns a `StreamingSession` to push frames into one at a time as they arrive.

`EngineConfig` and `FramePrediction` import without torch (output writers in other processes
need only them); `reconstruct` and `StreamingSession` load torch and the engines on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from zipmap_core.engines.config import EngineConfig
from zipmap_core.engines.results import FramePrediction

_LAZY = {
    "reconstruct": "zipmap_core.engines.dispatch",
    "reconstruct_distributed": "zipmap_core.engines.dispatch",
    "frame_shares": "zipmap_core.engines.frame_parallel",
    "StreamingSession": "zipmap_core.engines.streaming",
    "open_stream": "zipmap_core.engines.dispatch",
    "with_photometric_cameras": "zipmap_core.engines.photometric_cameras",
}

__all__ = [
    "EngineConfig", "FramePrediction", "StreamingSession", "frame_shares", "open_stream", "reconstruct",
    "reconstruct_distributed", "with_photometric_cameras",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
