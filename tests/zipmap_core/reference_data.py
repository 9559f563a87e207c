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


def assert_derived_camera_matches(ours: torch.Tensor | np.ndarray, ref: np.ndarray, name: str) -> None:
    """Cameras derived from `pose_enc` per element at 1e-3 relative, as the reference README says.

    focal = (H/2) / tan(fov/2) amplifies a small field of view's rounding (the dev case's 0.088 rad turns
    a 1.5e-5 difference in `pose_enc` into 1.3e-4 of the largest focal, depending on the CPU's summation
    order), so the 1e-4-of-max rule for raw outputs would make the test depend on the machine.
    """
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else ours
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs reference {ref.shape}"
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max(), err_msg=name)

