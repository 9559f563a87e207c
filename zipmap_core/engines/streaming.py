"""Streaming reconstruction: windows of frames, fast-weight state carried from call to call.

Each window first trains the fast weights on its own tokens, then reads them, so a frame's
prediction depends only on frames up to the end of its window. A `StreamingSession` can be fed
frames as they arrive (for example from a camera): `open_stream` (dispatch.py) readies the model
as `reconstruct` would and returns one, whose `push(frame)` gives that frame's prediction at
window 1 (the released streaming setting). `reconstruct_streaming` feeds a whole sequence window
by window; both give the same predictions. `GraphedStreamingSession` (`open_stream(...,
cuda_graph=True)`) replays each frame's forward pass as one CUDA graph.
"""

from __future__ import annotations

import time
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
    """One stream's fast-weight state, carried from call to call. `push` takes frames one at a
    time; `feed` / `feed_frames` take whole windows. The model must already be ready for `dtype`
    (`open_stream` does that)."""

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
        self.pending: list[torch.Tensor] = []  # pushed frames of the window not yet full

    def push(self, frame: torch.Tensor) -> list[FramePrediction]:
        """One frame [3, H, W] in [0, 1] as it arrives -> the predictions it completes: at window 1
        this frame's, at window W nothing until W frames are in, then those W frames'. Frames of
        a stream share one size."""
        if frame.dim() != 3 or frame.shape[0] != 3:
            raise ValueError(f"expected one frame [3, H, W], got {tuple(frame.shape)}")
        p = self.model.config.patch_size
        if frame.shape[1] % p or frame.shape[2] % p:
            raise ValueError(f"image size {tuple(frame.shape[1:])} is not a multiple of the patch size {p}")
        if self.pending and frame.shape != self.pending[0].shape:
            window = tuple(self.pending[0].shape)
            raise ValueError(f"frame size {tuple(frame.shape)} differs from this window's {window}")
        self.pending.append(frame)
        return self.flush() if len(self.pending) == self.window else []

    def flush(self) -> list[FramePrediction]:
        """The predictions of the frames pushed since the last full window (end of a stream)."""
        if not self.pending:
            return []
        images, self.pending = torch.stack(self.pending), []
        return list(self.feed_frames(images))

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


def _clone(state: TTTState) -> TTTState:
    return TTTState(state.w0.clone(), state.w1.clone(), state.w2.clone())


def _copy_into(dst: TTTState, src: TTTState) -> None:
    for d, s in zip((dst.w0, dst.w1, dst.w2), (src.w0, src.w1, src.w2)):
        d.copy_(s)


class GraphedStreamingSession(StreamingSession):
    """A window-1 stream whose per-frame forward pass is one replayed CUDA graph: at window 1
    every frame has the same shapes, and a frame's thousands of small kernel launches cost about
    as much as its arithmetic. The first `eager_frames` frames run eagerly (frame 0 is the
    reference frame, and the kernels warm up); the next one moves the frame and the fast weights
    into static buffers, which the graph reads and updates in place, and captures the graph
    (`capture_s`). Off CUDA the same static-buffer step runs eagerly, without a graph (tests)."""

    def __init__(
        self, model: ZipMap, device: torch.device, dtype: str = "bfloat16", local_points: bool = True,
        eager_frames: int = 2,
    ):
        super().__init__(model, 1, device, dtype, local_points)
        self.eager_frames = max(1, eager_frames)
        self.static_images: torch.Tensor | None = None
        self.static_out: dict | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_s: float | None = None

    def _step(self) -> dict:
        """The frame in the static buffer through the model, the new state written back in place."""
        per_frame = tokens_per_frame(self.model, self.static_images.shape[-2:])
        # the eager frames' autocast, so that compiled blocks meet the same global state (no
        # recompilation); its weight-cast cache lives and dies inside the captured region
        with autocast(self.device, self.dtype):
            out = self.model(
                self.static_images.unsqueeze(0), windowed_schedule(per_frame, per_frame), self.states,
                self.frames_seen, self.local_points,
            )
        for state, new in zip(self.states, out.pop("states")):
            _copy_into(state, new)
        return out

    def _capture(self, frame: torch.Tensor) -> None:
        start = time.perf_counter()
        self.static_images = frame.to(self.device).clone()
        self.states = [_clone(s) for s in self.states]
        if self.device.type == "cuda":
            saved = [_clone(s) for s in self.states]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            for state, old in zip(self.states, saved):
                _copy_into(state, old)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = self._step()
            torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start

    @torch.inference_mode()
    def feed(self, images: torch.Tensor) -> dict:
        if self.frames_seen < self.eager_frames:
            return super().feed(images)
        if images.shape[0] != 1:
            raise ValueError(f"a graphed stream takes one frame at a time, got {images.shape[0]}")
        if self.static_images is None:
            self._capture(images[0])
        elif images.shape[1:] != self.static_images.shape:
            raise ValueError(f"frame size {tuple(images.shape[1:])} differs from the stream's "
                             f"{tuple(self.static_images.shape)}")
        self.static_images.copy_(images[0], non_blocking=True)
        if self.graph is None:
            out = self._step()
        else:
            self.graph.replay()
            out = self.static_out
        self.frames_seen += 1
        return dict(out)


def reconstruct_streaming(
    model: ZipMap, images: torch.Tensor, engine: EngineConfig, device: torch.device
) -> Iterator[FramePrediction]:
    window = engine.window or model.config.streaming_window
    if window is None:
        raise ValueError("streaming needs a window: set engine.window or the model's streaming_window")
    session = StreamingSession(model, window, device, engine.dtype, engine.local_points)
    for start in range(0, images.shape[0], window):
        yield from session.feed_frames(images[start : start + window])
