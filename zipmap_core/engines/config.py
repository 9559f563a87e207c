"""How to run a model over a sequence."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_FRAME_PARALLEL = 8  # the GPUs of one host


class EngineConfig(BaseModel):
    """Choice of inference engine.

    - offline: one bidirectional TTT update over all frames, then apply (the published method).
    - chunked: the same result as offline, computed layer by layer over chunks of `chunk_size`
      frames so that GPU memory does not grow with the sequence length.
    - streaming: windows of `window` frames; each window updates the fast weights, then is read.

    `frame_parallel` spreads one chunked sequence over that many processes (one GPU each), every
    process owning a contiguous share of the frames (`reconstruct_distributed`, run in each
    process of a torch.distributed group); "auto" takes the group's size. `reconstruct` runs one
    process: it accepts 1 and "auto" only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["offline", "chunked", "streaming"] = "offline"
    chunk_size: int = Field(default=16, ge=1)
    window: int | None = Field(default=None, ge=1)  # None: the model config's streaming_window
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # the GPU fast path: weight matrices stored in `dtype` (cast in place, once; vectors, tokens,
    # the camera head and the fast-weight updates stay float32, see precision.float32_parameters),
    # dense heads channels-last in `dtype`; the trunk still runs under autocast
    fast: bool = False
    # fast path only: torch.compile the blocks (the first sequences of each new shape pay for it)
    compile: bool = False
    gpu_cache_gb: float = Field(default=6.0, ge=0)  # chunked: activations kept on the GPU up to this
    host_memory_budget_gb: float = Field(default=32.0, gt=0)  # chunked: then pinned host memory, then scratch
    scratch_dir: str | None = None  # chunked: where spilled activations go (a temp dir by default)
    # chunked: the DPT heads read 4 layers of every frame (their projections: about 6 MB a frame
    # and head at full size in bf16). "keep" stores them during the pass; "recompute" reruns the
    # trained network per chunk instead (more compute, no storage); "auto" keeps them when they fit
    # in the host memory budget.
    head_inputs: Literal["auto", "keep", "recompute"] = "auto"
    # run the local-point head too (half of the dense-head compute); depth and cameras suffice for
    # world points, so it is off unless asked for
    local_points: bool = False
    frame_parallel: Annotated[int, Field(ge=1, le=MAX_FRAME_PARALLEL)] | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _fast_needs_low_precision(self) -> EngineConfig:
        if self.fast and self.dtype == "float32":
            raise ValueError("fast=True stores the weights in bfloat16 or float16: set dtype accordingly")
        if self.compile and not self.fast:
            raise ValueError("compile=True is part of the fast path: set fast=True too")
        if self.frame_parallel not in (1, "auto") and self.mode != "chunked":
            raise ValueError(f"frame_parallel={self.frame_parallel} needs mode='chunked' (the frame-parallel engine)")
        return self
