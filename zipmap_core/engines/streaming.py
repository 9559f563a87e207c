"""Streaming reconstruction: windows of frames, fast-weight state carried from call to call.

Each window first trains the fast weights on its own tokens, then reads them, so a frame's
prediction depends only on frames up to the end of its window. A `StreamingSession` can be fed
frames as they arrive (for example from a camera); `reconstruct_streaming` feeds a whole
sequence window by window.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zipmap_core.engines.config import EngineConfig
from zipmap_core.engines.frames import align_to_reference, frame_predictions
from zipmap_core.engines.precision import autocast
from zipmap_core.engines.results import FramePrediction
from zipmap_core.geometry import pose_encoding_to_cameras
from zipmap_core.layers.ttt import TTTState, windowed_schedule
from zipmap_core.models.zipmap import ZipMap


def tokens_per_frame(model: ZipMap, image_hw: tuple[int, int]) -> int:
    p = model.config.patch_size
    return model.config.patch_start_idx + (image_hw[0] // p) * (image_hw[1] // p)


class StreamingSession:
    def __init__(
        self, model: ZipMap, window: int, device: torch.device, dtype: str = "float32", local_points: bool = True
    ):
        if not model.aggregator.is_ttt:
            raise ValueError("streaming needs a TTT model (global_block='ttt')")
        self.model, self.window, self.device, self.dtype = model, window, device, dtype
        self.local_points = local_points
        self.states: list[TTTState] | None = None
        self.frames_seen = 0
        self.reference: torch.Tensor | None = None  # camera-from-world of frame 0

    @torch.inference_mode()
    def feed(self, images: torch.Tensor) -> dict:
        """images [S, 3, H, W] -> raw model outputs for these frames (state kept for the next call)."""
        S = images.shape[0]
        per_frame = tokens_per_frame(self.model, images.shape[-2:])
        schedule = windowed_schedule(S * per_frame, self.window * per_frame)
        with autocast(self.device, self.dtype):
            out = self.model(
                images.to(self.device).unsqueeze(0), schedule, self.states, self.frames_seen, self.local_points
            )
        self.states = out.pop("states")
        self.frames_seen += S
        return out

    def feed_frames(self, images: torch.Tensor) -> Iterator[FramePrediction]:
        first = self.frames_seen
        out = self.feed(images)
        extrinsics, intrinsics = pose_encoding_to_cameras(out["pose_enc"][0], images.shape[-2:])
        if self.reference is None:
            self.reference = extrinsics[0].clone()
        extrinsics = align_to_reference(extrinsics, self.reference)
        yield from frame_predictions(first, images, extrinsics, intrinsics, out)


def reconstruct_streaming(
    model: ZipMap, images: torch.Tensor, engine: EngineConfig, device: torch.device
) -> Iterator[FramePrediction]:
    window = engine.window or model.config.streaming_window
    if window is None:
        raise ValueError("streaming needs a window: set engine.window or the model's streaming_window")
    session = StreamingSession(model, window, device, engine.dtype, engine.local_points)
    for start in range(0, images.shape[0], window):
        yield from session.feed_frames(images[start : start + window])
