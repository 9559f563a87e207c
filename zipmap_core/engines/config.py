"""How to run a model over a sequence."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AUTO = "auto"
MAX_FRAME_PARALLEL = 8  # the GPUs of one host


class EngineConfig(BaseModel):
    """Choice of inference engine.

    - offline: one bidirectional TTT update over all frames, then apply (the published method).
    - chunked: the same result as offline, computed layer by layer over chunks of `chunk_size`
      frames so that GPU memory does not grow with the sequence length.
    - streaming: windows of `window` frames; each window updates the fast weights, then is read.

    `mode`, `dtype`, `fast`, `compile` and `cameras` default to "auto": decided per sequence by
    `zipmap_core.engines.auto.resolve_engine` (the bf16 fast path on CUDA, float32 on CPU; offline
    when the sequence fits the accelerator's memory, chunked when it does not; streaming for
    streaming models). Explicit values always win.

    `frame_parallel` spreads one chunked sequence over that many processes (one GPU each), every
    process owning a contiguous share of the frames (`reconstruct_distributed`, run in each
    process of a torch.distributed group); "auto" takes the group's size. `reconstruct` runs one
    process: it accepts 1 and "auto" only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["auto", "offline", "chunked", "streaming"] = AUTO
    # chunked: frames per chunk (GPU memory grows with it: 64 keeps a full-size model at 392x518
    # near 14 GiB, and its chunks fill an H200; the result does not depend on it)
    chunk_size: int = Field(default=64, ge=1)
    window: int | None = Field(default=None, ge=1)  # None: the model config's streaming_window
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = AUTO
    # the GPU fast path: weight matrices stored in `dtype` (cast in place, once; vectors, tokens,
    # the camera head and the fast-weight updates stay float32, see precision.float32_parameters),
    # dense heads channels-last in `dtype`; the trunk still runs under autocast
    fast: bool | Literal["auto"] = AUTO
    # fast path only: torch.compile the blocks (the first sequences of each new shape pay for it)
    compile: bool | Literal["auto"] = AUTO
    # precision of the TTT layers' Newton-Schulz orthogonalisation: bfloat16 as the released layer
    # (which casts to bf16 even without autocast: the checkpoints' numerics), or float32, exact
    # (what ../shared/reference was computed with; for tests and numerical comparisons)
    newton_schulz: Literal["bfloat16", "float32"] = "bfloat16"
    gpu_cache_gb: float = Field(default=6.0, ge=0)  # chunked: activations kept on the GPU up to this
    host_memory_budget_gb: float = Field(default=32.0, gt=0)  # chunked: then pinned host memory, then scratch
    scratch_dir: str | None = None  # chunked: where spilled activations go (a temp dir by default)
    # chunked: the DPT heads read 4 layers of every frame (what `DPTHead.project_layer` makes of
    # them: 2.3 MB a frame and head at 392x518 in bf16, next to 4.3 MB of float32 tokens). "keep"
    # stores them during the pass; "recompute" reruns the trained network per chunk instead (more
    # compute, no storage); "auto" keeps them when they fit in the host memory budget and GPU cache.
    head_inputs: Literal["auto", "keep", "recompute"] = "auto"
    # run the local-point head too (half of the dense-head compute); depth and cameras suffice for
    # world points, so it is off unless asked for
    local_points: bool = False
    frame_parallel: Annotated[int, Field(ge=1, le=MAX_FRAME_PARALLEL)] | Literal["auto"] = "auto"
    # exploratory, fast path only: the trunk's big linear layers in float8 e4m3 with row-wise
    # scales (torch._scaled_mm on Hopper; engines/fp8.py); off unless asked for, see the README for
    # its speed and its error against float32 and bf16
    fp8: bool = False
    # where the cameras come from: the camera head ("network"), or direct photometric alignment of
    # each frame to the previous one with the predicted depth and intrinsics ("photometric",
    # zipmap_core/photometric.py: for models whose depth is better than their camera head, such as
    # the bundled demo models; 0.13 s a frame at 224x168 on a CPU core); "auto": the model
    # config's `cameras` (photometric for the demo presets), the network's in streams and
    # frame-parallel groups
    cameras: Literal["auto", "network", "photometric"] = AUTO

    @model_validator(mode="after")
    def _fast_needs_low_precision(self) -> EngineConfig:
        if self.fast is True and self.dtype == "float32":
            raise ValueError("fast=True stores the weights in bfloat16 or float16: set dtype accordingly")
        if self.compile is True and self.fast is False:
            raise ValueError("compile=True is part of the fast path: set fast=True too")
        if self.fp8 and (self.fast is False or self.dtype in ("float32", "float16")):
            raise ValueError("fp8=True runs on the bfloat16 fast path: set fast=True and dtype='bfloat16' (or 'auto')")
        if self.frame_parallel not in (1, AUTO) and self.mode not in ("chunked", AUTO):
            raise ValueError(f"frame_parallel={self.frame_parallel} needs mode='chunked' (the frame-parallel engine)")
        if self.cameras == "photometric" and self.frame_parallel not in (1, AUTO):
            raise ValueError("cameras='photometric' chains every frame to the one before: it runs in one process "
                             "(frame_parallel 1 or 'auto'), not over a frame-parallel group")
        return self

    @property
    def resolved(self) -> bool:
        """True when nothing is left to decide ("auto")."""
        return AUTO not in (self.mode, self.dtype, self.fast, self.compile, self.cameras)

    def settings(self) -> dict:
        """The settings that decide how (not whether) a sequence is computed, for the record."""
        keys = ("mode", "dtype", "fast", "compile", "newton_schulz", "local_points")
        out = {k: getattr(self, k) for k in keys}
        if self.mode == "chunked":
            out["chunk_size"] = self.chunk_size
        if self.mode == "streaming":
            out["window"] = self.window
        if self.fp8:
            out["fp8"] = True
        if self.cameras == "photometric":
            out["cameras"] = self.cameras
        return out
