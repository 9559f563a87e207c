"""Access to ../shared/reference: the published models' layouts and a small model's outputs."""

from __future__ import annotations

import json
import math
import os
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import torch

REFERENCE_DIR = Path(
    os.environ.get("ZIPMAP_REFERENCE_DIR", Path(__file__).resolve().parents[3] / "shared" / "reference")
)


@cache
def load_json(name: str) -> dict:
    return json.loads((REFERENCE_DIR / name).read_text())


def load_arrays() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / "zipmap_reference_dev.npz") as z:
        return {k: z[k] for k in z.files}


def filled_value(name: str, shape: list[int]) -> torch.Tensor:
    """The reference's weight fill rule (zipmap_reference_dev.json: weight_fill_rule)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    z = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) <= 1:
        if name.endswith("gamma"):
            return 0.1 + 0.01 * z
        if name.endswith("weight"):
            return 1.0 + 0.05 * z
        return 0.02 * z
    fan_in = shape[1] if len(shape) == 3 else math.prod(shape[1:])
    return z / math.sqrt(fan_in)


def filled_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: filled_value(name, list(t.shape)) if t.is_floating_point() else t
        for name, t in model.state_dict().items()
    }
