"""`reconstruct`: checks the input, decides what was left to "auto", readies the model for the
requested precision, and hands the sequence to the engine of the requested mode."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from zipmap_core.engines.auto import resolve_engine
from zipmap_core.engines.chunked import reconstruct_chunked
from zipmap_core.engines.compiled import compile_for_inference
from zipmap_core.engines.config import EngineConfig
from zipmap_core.engines.offline import StateSink, reconstruct_offline
from zipmap_core.engines.precision import (
    cast_for_inference,
    resolve_device,
    set_newton_schulz_precision,
    weights_dtype,
)
from zipmap_core.engines.results import FramePrediction
from zipmap_core.engines.streaming import reconstruct_streaming
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
    if images.dim() == 5 and images.shape[0] == 1:
        images = images[0]
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [S, 3, H, W], got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no frames to reconstruct")
    p = model.config.patch_size
    if images.shape[-2] % p or images.shape[-1] % p:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
    device = resolve_device(device, model)
    if not engine.resolved:
        engine = resolve_engine(engine, model, images.shape[0], tuple(images.shape[-2:]), device)
    if on_state is not None and engine.mode == "streaming":
        raise ValueError("scene states come from one bidirectional update over all frames: use engine mode "
                         "'offline' or 'chunked' (streaming keeps per-window states)")
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
    set_newton_schulz_precision(model, engine.newton_schulz)
    if on_state is not None:
        if not model.aggregator.is_ttt:
            raise ValueError(f"model {model.config.name!r} has no fast weights to keep (global_block='attention')")
        return _ENGINES[engine.mode](model, images, engine, device, on_state)
    return _ENGINES[engine.mode](model, images, engine, device)
