"""A seeded sampler for scene and camera parameters.

Parameters are always drawn on the CPU with a private `torch.Generator`, so one seed gives the
same scene on every device and no global random state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

T = TypeVar("T")


class Rng:
    """Draws python floats, ints and choices from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(int(seed) % (2**63))

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        return low + (high - low) * float(torch.rand((), generator=self._gen, dtype=torch.float64))

    def uniforms(self, n: int, low: float = 0.0, high: float = 1.0) -> list[float]:
        values = torch.rand(n, generator=self._gen, dtype=torch.float64)
        return (low + (high - low) * values).tolist()

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high] (both inclusive)."""
        return int(torch.randint(low, high + 1, (), generator=self._gen))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def sign(self) -> float:
        return 1.0 if self.uniform() < 0.5 else -1.0

    def unit_vector(self) -> list[float]:
        v = torch.randn(3, generator=self._gen, dtype=torch.float64)
        return (v / v.norm().clamp_min(1e-9)).tolist()

    def colour(self, low: float = 0.1, high: float = 0.95) -> list[float]:
        return self.uniforms(3, low, high)


def derive_seed(seed: int, index: int) -> int:
    """A well-mixed per-item seed, so sequences of one dataset do not share random streams."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) % 2**64
    x ^= x >> 32
    return x % 2**31
