"""A training run's resumable state: weights, optimiser, step, clock, data stream and history.

GPU sessions are short, so a long training is a chain of runs, each starting on a fresh machine
from the state the previous one wrote. Weights stay float32; the Adam moments are stored in
bfloat16, which halves the file (with betas (0.9, 0.95) the moments average the last 10-20
steps, so their rounding is noise next to the gradients'). The data stream's position is its
generator state plus the seeds of its pool, which a resumed run renders again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch

from zipmap_core.checkpoint import write_file

STATE_FORMAT = 1
MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass
class ModelState:
    """One model of the run (a run may train a baseline in lockstep with the main model)."""

    preset: str
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # time spent in this model's steps, over all runs


@dataclass
class TrainingState:
    step: int
    seconds: float  # wall-clock training time over all runs so far (what a time budget counts)
    data: dict[str, Any]  # SyntheticBatches.state_dict()
    models: dict[str, ModelState]  # by preset
    config: dict[str, Any] = field(default_factory=dict)  # the settings of the run that wrote it


def compact_optimizer_state(state: dict[str, Any], dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """A copy of an Adam(W) state dict on the CPU with its moments in `dtype`
    (`Optimizer.load_state_dict` casts them back to each parameter's dtype)."""
    per_param = {
        index: {k: (v.detach().to("cpu", dtype) if k in MOMENT_KEYS else v.detach().cpu()) for k, v in entry.items()}
        for index, entry in state["state"].items()
    }
    return {"state": per_param, "param_groups": state["param_groups"]}


def save_training_state(
    state: TrainingState, uri: str | os.PathLike, moments_dtype: torch.dtype = torch.bfloat16
) -> None:
    payload = {
        "format": STATE_FORMAT,
        "step": state.step,
        "seconds": state.seconds,
        "data": state.data,
        "config": state.config,
        "models": {
            name: {
                "preset": m.preset,
                "model": {k: (v.float() if v.is_floating_point() else v).detach().cpu() for k, v in m.model.items()},
                "optimizer": compact_optimizer_state(m.optimizer, moments_dtype),
                "history": m.history,
                "seconds": m.seconds,
            }
            for name, m in state.models.items()
        },
    }
    write_file(os.fspath(uri), lambda f: torch.save(payload, f))


def load_training_state(uri: str | os.PathLike) -> TrainingState:
    with fsspec.open(os.fspath(uri), "rb") as f:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    if payload.get("format") != STATE_FORMAT:
        raise ValueError(f"{uri}: not a training state of format {STATE_FORMAT} (got {payload.get('format')!r})")
    return TrainingState(
        step=payload["step"],
        seconds=payload["seconds"],
        data=payload["data"],
        config=payload["config"],
        models={name: ModelState(**entry) for name, entry in payload["models"].items()},
    )
