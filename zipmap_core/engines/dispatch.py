"""`reconstruct`: checks the input, decides what was left to "auto", readies the model for the
requested precision, and hands the sequence to the engine of the requested mode;
`reconstruct_distributed`: the same for one process's share of a sequence spread over several."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zipmap_core.engines.auto import resolve_engine
from zipmap_core.engines.chunked import reconstruct_chunked
from zipmap_core.engines.compiled import compile_for_inference
from zipmap_core.engines.config import AUTO, EngineConfig
from zipmap_core.engines.fp8 import set_fp8
from zipmap_core.engines.frame_parallel import exchange_shards, group_size
from zipmap_core.engines.offline import StateSink, reconstruct_offline
from zipmap_core.engines.photometric_cameras import with_photometric_cameras
from zipmap_core.engines.precision import (
    cast_for_inference,
    resolve_device,
    set_newton_schulz_precision,
    weights_dtype,
)
from zipmap_core.engines.results import FramePrediction
from zipmap_core.engines.streaming import GraphedStreamingSession, StreamingSession, reconstruct_streaming
from zipmap_core.models.zipmap import ZipMap

_ENGINES = {"offline": reconstruct_offline, "chunked": reconstruct_chunked, "streaming": reconstruct_streaming}


def reconstruct(
    model: ZipMap,
    images: torch.Tensor,
    engine: EngineConfig | None = None,
    *,
    device: str | torch.device | None = None,
    on_state: StateSink | None = None,
) -> Iterator[FramePrediction]:
    """Frames of `images` [S, 3, H, W] in order. `on_state`, if given, is called once with the
    sequence's `SceneState` (every TTT layer's trained fast weights and the cameras) as soon as it
    is known, before the frames' dense heads: offline and chunked engines only."""
    engine = engine or EngineConfig()
    if engine.frame_parallel not in (1, AUTO):
        raise ValueError(
            f"frame_parallel={engine.frame_parallel} spreads one sequence over {engine.frame_parallel} processes: "
            "call reconstruct_distributed in each of them (README: one sequence on several GPUs)"
        )
    images = _checked_images(model, _unbatched(images))
    device = resolve_device(device, model)
    if not engine.resolved:
        engine = resolve_engine(engine, model, images.shape[0], tuple(images.shape[-2:]), device)
    if on_state is not None and engine.mode == "streaming":
        raise ValueError("scene states come from one bidirectional update over all frames: use engine mode "
                         "'offline' or 'chunked' (streaming keeps per-window states)")
    _ready(model, engine)
    if on_state is not None:
        if not model.aggregator.is_ttt:
            raise ValueError(f"model {model.config.name!r} has no fast weights to keep (global_block='attention')")
        frames = _ENGINES[engine.mode](model, images, engine, device, on_state)
    else:
        frames = _ENGINES[engine.mode](model, images, engine, device)
    return with_photometric_cameras(frames, device) if engine.cameras == "photometric" else frames


def open_stream(
    model: ZipMap,
    engine: EngineConfig | None = None,
    *,
    device: str | torch.device | None = None,
    image_hw: tuple[int, int] | None = None,
    cuda_graph: bool = False,
) -> StreamingSession:
    """A stream to push frames into one at a time (`session.push(frame)`: at the streaming
    model's released window of 1, each frame's prediction as soon as it is pushed), with the
    same predictions as `reconstruct(..., mode="streaming")` over the whole sequence. "auto"
    settings are decided as for a one-frame sequence of `image_hw` (default: the model's image
    size), so a stream is compiled only if `compile=True` is asked for. `cuda_graph` (window 1
    only): replay each frame's forward pass as one CUDA graph (`GraphedStreamingSession`)."""
    engine = (engine or EngineConfig()).model_copy(update={"mode": "streaming"})
    if engine.cameras == AUTO:  # a stream hands out the network's cameras
        engine = engine.model_copy(update={"cameras": "network"})
    if engine.cameras != "network":
        raise ValueError("a stream hands out the network's cameras: pass its frames through "
                         "zipmap_core.engines.with_photometric_cameras for cameras='photometric'")
    if engine.frame_parallel not in (1, AUTO):
        raise ValueError("a stream runs in one process: frame_parallel must be 1 or 'auto'")
    device = resolve_device(device, model)
    if not engine.resolved or engine.window is None:
        hw = image_hw or (model.config.img_size, model.config.img_size)
        engine = resolve_engine(engine, model, 1, hw, device)
    window = engine.window or model.config.streaming_window
    if window is None:
        raise ValueError("streaming needs a window: set engine.window or the model's streaming_window")
    if cuda_graph and window != 1:
        raise ValueError(f"cuda_graph needs window 1 (static shapes), got window {window}")
    _ready(model, engine)
    if cuda_graph:
        return GraphedStreamingSession(model, device, engine.dtype, engine.local_points)
    return StreamingSession(model, window, device, engine.dtype, engine.local_points)


def reconstruct_distributed(
    model: ZipMap,
    images: torch.Tensor,
    engine: EngineConfig | None = None,
    *,
    device: str | torch.device | None = None,
    group=None,
    on_state: StateSink | None = None,
) -> Iterator[FramePrediction]:
    """The chunked engine with one sequence spread over the processes of a torch.distributed
    group (default: the whole world; NCCL on GPUs, gloo on CPUs; without torch.distributed, one
    process). Call it in every process, each with its own contiguous share of the frames in rank
    order (`frame_shares` gives an even split), and consume every frame in every process: the
    engine's collectives run between yields. Each process yields its own share's frames, with
    their indices in the whole sequence; the result is one process's up to summation order
    (frame_parallel.py). "auto" settings are decided as for one process running the whole
    sequence (mode: chunked), identically in every process.

    `on_state`, if given, is called once with the whole sequence's `SceneState` (not the share's):
    the fast weights are trained from every process's frames (all-reduced) and the cameras of all
    frames are gathered, so every process that passes it gets the same state, one process's up to
    summation order. Keep it in one process (e.g. rank 0); passing it elsewhere only costs a copy."""
    engine = engine or EngineConfig(mode="chunked")
    processes = group_size(group)
    if engine.mode not in ("chunked", AUTO):
        raise ValueError(f"reconstruct_distributed runs the chunked engine: got mode={engine.mode!r}")
    if engine.cameras == "photometric":
        raise ValueError("cameras='photometric' chains every frame to the one before: gather the frames in order "
                         "and pass them through zipmap_core.engines.with_photometric_cameras")
    if engine.frame_parallel not in (AUTO, processes):
        raise ValueError(f"engine.frame_parallel={engine.frame_parallel}, but the process group has {processes}")
    images = _unbatched(images)
    device = resolve_device(device, model)
    shard = exchange_shards(images, device, group)  # first: bad input then raises in every process
    images = _checked_images(model, images)
    engine = engine.model_copy(update={"mode": "chunked", "frame_parallel": processes, "cameras": "network"})
    if not engine.resolved:  # every process decides alike: from the whole sequence and the largest share
        hw = tuple(images.shape[-2:])
        engine = resolve_engine(engine, model, shard.total, hw, device, run_frames=max(shard.counts))
    _ready(model, engine)
    return reconstruct_chunked(model, images, engine, device, on_state, shard=shard)


def _unbatched(images: torch.Tensor) -> torch.Tensor:
    return images[0] if images.dim() == 5 and images.shape[0] == 1 else images


def _checked_images(model: ZipMap, images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [S, 3, H, W], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no frames to reconstruct")
    p = model.config.patch_size
    if images.shape[-2] % p or images.shape[-1] % p:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
    return images


def _ready(model: ZipMap, engine: EngineConfig) -> None:
    """The model in eval mode, cast and compiled for the fast path if asked, at the engine's precision."""
    model.eval()
    if engine.fast:
        cast_for_inference(model, engine.dtype)
        if engine.compile:
            compile_for_inference(model)
    elif weights_dtype(model) != torch.float32:
        raise ValueError(
            f"this model's weights were cast to {weights_dtype(model)} for the fast path; "
            "use EngineConfig(fast=True, ...) or load a fresh model"
        )
    set_fp8(model, engine.fp8)
    set_newton_schulz_precision(model, engine.newton_schulz)
