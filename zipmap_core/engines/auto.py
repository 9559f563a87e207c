"""`engine: auto`: the settings a sequence runs with when the caller leaves them to us.

The rules (explicit settings always win, and the model's own state decides what it can still do):

- dtype: bfloat16 on CUDA (float16 on GPUs without bf16), float32 on the CPU (bfloat16 there
  only when the fast path is asked for explicitly).
- fast: on CUDA whenever the dtype is not float32 (the fast path is our better bf16 engine: plain
  autocast was slower than the released code on an H200).
- compile: on the fast path on CUDA once the run is long enough to pay back the compilation:
  when this model is expected to run at least `COMPILE_PAYBACK_FRAMES` frames at this image size
  (the caller says how many with `run_frames`; by default only this sequence's).
- cameras: the model config's (`ModelConfig.cameras`: photometric alignment for the bundled demo
  models, the camera head for the published ones); the camera head's over a frame-parallel group.
- mode: streaming for streaming models (the released streaming model is trained and run that
  way), offline for global-attention models (chunked needs TTT); otherwise offline when the
  predicted peak memory of the offline engine fits `MEMORY_HEADROOM` of the device's memory, and
  chunked (same result, memory bounded by the chunk) when it does not.

Peak memory is predicted from the network's size and the number of tokens (`offline_peak_bytes`,
`chunked_peak_bytes`), with constants fitted to the README's measurements on one H200 (random
full-size weights, 392x518, 50 to 10000 frames); tests/zipmap_core/test_auto.py checks the
predictions against every one of those points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from zipmap_core.config import ModelConfig
from zipmap_core.engines.config import AUTO, EngineConfig
from zipmap_core.engines.precision import DTYPES, float32_parameters, weights_dtype

GiB = 2**30

# Measured by `python bench/engine_auto.py` on one H200 (offline_affine, 392x518, fast path,
# 2026-11-30): compiling costs 57 s per actor and image size (warm-up of two lengths, after which
# the frame count is dynamic) and saves 1.89 ms a frame (250 frames: eager 3.60 s, compiled
# 3.13 s), so it pays back after about 30,000 frames.
COMPILE_PAYBACK_FRAMES = 30_000

# Run offline only when its predicted peak stays within this share of the device's memory.
MEMORY_HEADROOM = 0.9

# Offline peak = weights + workspace + tokens x embed_dim x bytes-per-token-channel. Fitted to the
# README's offline peaks (392x518, 1041 tokens a frame, embed 1024): the compiled fast path
# (7.9, 11.6, 19.7, 35.1, 50.6 GiB at 50-750 frames: 61 B and 1.8 GiB by least squares, rounded
# up) and plain bf16 autocast (14.0-59.7 GiB: the float32 heads' workspace dominates short
# sequences). float32 is not measured on a GPU: twice autocast's activations (an estimate).
_BYTES_PER_TOKEN_CHANNEL = {"fast": 62.0, "autocast": 66.0, "float32": 132.0}
_WORKSPACE_BYTES = {"fast": 2.0 * GiB, "autocast": 5.5 * GiB, "float32": 5.5 * GiB}
# Chunked peak = weights + workspace + one chunk's tokens x embed_dim x bytes-per-token-channel +
# what the activation store keeps on the GPU (up to gpu_cache_gb): a frame's float32 tokens (4 B a
# token-channel) and, per dense head, its DPT projections (sum(out_channels) values a patch in the
# head's dtype), as zipmap_core/engines/chunked.py stores them. Fitted to the README's chunked
# peaks at chunk 64 (8.1-17.8 GiB with both heads and an 8 GiB cache; 13.3-14.0 GiB at 750-10000
# frames, depth head only, 6 GiB cache).
_CHUNK_BYTES_PER_TOKEN_CHANNEL = {"fast": 55.0, "autocast": 66.0, "float32": 132.0}
_CHUNK_WORKSPACE_BYTES = {"fast": 1.3 * GiB, "autocast": 5.5 * GiB, "float32": 5.5 * GiB}
_TOKEN_CACHE_BYTES = 4


def _precision(engine: EngineConfig) -> str:
    if engine.dtype == "float32":
        return "float32"
    return "fast" if engine.fast else "autocast"


def _workspace(table: dict[str, float], engine: EngineConfig, cfg: ModelConfig) -> float:
    """The per-sequence workspace, measured at embed_dim 1024 and taken to scale with the width."""
    return table[_precision(engine)] * cfg.embed_dim / 1024


def weight_bytes(model: torch.nn.Module, engine: EngineConfig) -> int:
    """Bytes of the weights on the device under `engine`'s (resolved) precision."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    if engine.fast:
        keep = float32_parameters(model)
        kept = sum(p.numel() for p in params if p in keep)
        return 4 * kept + DTYPES[engine.dtype].itemsize * (total - kept)
    return 4 * total


def tokens_per_frame(config: ModelConfig, image_hw: tuple[int, int]) -> int:
    return config.patch_start_idx + (image_hw[0] // config.patch_size) * (image_hw[1] // config.patch_size)


def offline_peak_bytes(model: torch.nn.Module, engine: EngineConfig, num_frames: int, image_hw: tuple[int, int]) -> int:
    """Predicted peak accelerator memory of the offline engine (`engine` resolved but for mode)."""
    cfg: ModelConfig = model.config
    per_frame = tokens_per_frame(cfg, image_hw) * cfg.embed_dim * _BYTES_PER_TOKEN_CHANNEL[_precision(engine)]
    return int(weight_bytes(model, engine) + _workspace(_WORKSPACE_BYTES, engine, cfg) + num_frames * per_frame)


def chunked_peak_bytes(model: torch.nn.Module, engine: EngineConfig, num_frames: int, image_hw: tuple[int, int]) -> int:
    """Predicted peak accelerator memory of the chunked engine."""
    cfg: ModelConfig = model.config
    precision = _precision(engine)
    tokens = tokens_per_frame(cfg, image_hw) * cfg.embed_dim
    grid = (image_hw[0] // cfg.patch_size) * (image_hw[1] // cfg.patch_size)
    heads = 1 + int(engine.local_points)
    head_bytes = 4 if precision == "float32" else 2
    cached = tokens * _TOKEN_CACHE_BYTES + heads * grid * sum(cfg.dpt.out_channels) * head_bytes
    chunk = min(num_frames, engine.chunk_size) * tokens * _CHUNK_BYTES_PER_TOKEN_CHANNEL[precision]
    gpu_cache = min(engine.gpu_cache_gb * GiB, num_frames * cached)
    return int(weight_bytes(model, engine) + _workspace(_CHUNK_WORKSPACE_BYTES, engine, cfg) + chunk + gpu_cache)


@dataclass(frozen=True)
class Accelerator:
    """What the decisions need to know about the device a sequence runs on."""

    type: str  # "cuda" or "cpu"
    memory_bytes: int  # usable by this process
    bf16: bool = True  # bfloat16 supported (CUDA compute capability 8.0 and later)

    @classmethod
    def of(cls, device: torch.device | str) -> Accelerator:
        """Measured: on CUDA free memory plus what PyTorch already holds; on the CPU the machine's
        available memory plus this process's resident memory."""
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return cls("cuda", int(free + torch.cuda.memory_reserved(device)), torch.cuda.is_bf16_supported())
        page = os.sysconf("SC_PAGE_SIZE")
        try:
            with open("/proc/self/statm") as f:
                resident = int(f.read().split()[1]) * page
        except OSError:
            resident = 0
        return cls(device.type, int(os.sysconf("SC_AVPHYS_PAGES") * page + resident))


def resolve_engine(
    engine: EngineConfig,
    model: torch.nn.Module,
    num_frames: int,
    image_hw: tuple[int, int],
    device: Accelerator | torch.device | str,
    *,
    run_frames: int | None = None,
) -> EngineConfig:
    """`engine` with every "auto" replaced by a decision for this sequence (see the module doc).

    run_frames: frames this model is expected to run at this image size, this sequence's included
    (decides compilation; default: this sequence's)."""
    acc = device if isinstance(device, Accelerator) else Accelerator.of(device)
    cuda = acc.type == "cuda"
    cast = weights_dtype(model) != torch.float32  # the fast path has cast this model for good
    update: dict = {}
    wants_fast = engine.fast is True or engine.compile is True or engine.fp8  # parts of the fast path

    dtype = engine.dtype
    if dtype == AUTO:
        if cast:
            dtype = next(name for name, dt in DTYPES.items() if dt == weights_dtype(model))
        elif cuda:
            dtype = "bfloat16" if acc.bf16 else "float16"
        else:
            dtype = "bfloat16" if wants_fast else "float32"
        update["dtype"] = dtype

    fast = engine.fast
    if fast == AUTO:  # a cast model runs only the fast path; float32 then fails with a clear error
        fast = dtype != "float32" and (cast or cuda or wants_fast)
        update["fast"] = fast

    if engine.compile == AUTO:
        already = getattr(model, "_compiled_for_inference", False)  # compiling cannot be undone
        long_run = (run_frames if run_frames is not None else num_frames) >= COMPILE_PAYBACK_FRAMES
        update["compile"] = bool(fast and (already or (cuda and long_run)))

    cfg: ModelConfig = model.config
    if engine.cameras == AUTO:  # photometric cameras chain frames in one process: never over a group
        update["cameras"] = cfg.cameras if engine.frame_parallel in (1, AUTO) else "network"
    resolved = engine.model_copy(update=update)
    if engine.mode == AUTO:
        if cfg.global_block != "ttt":
            mode = "offline"
        elif cfg.streaming_window is not None:
            mode = "streaming"
        else:
            fits = offline_peak_bytes(model, resolved, num_frames, image_hw) <= MEMORY_HEADROOM * acc.memory_bytes
            mode = "offline" if fits else "chunked"
        resolved = resolved.model_copy(update={"mode": mode})
    if resolved.mode == "streaming" and resolved.window is None and cfg.streaming_window is not None:
        resolved = resolved.model_copy(update={"window": cfg.streaming_window})
    return EngineConfig.model_validate(resolved.model_dump())
