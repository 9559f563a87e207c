"""Procedural textures evaluated from 3D positions, so every view sees the same surface colour.

All patterns are analytic functions of a texture coordinate q = local_position * frequency +
offset; lattice value noise uses an integer hash, which gives identical results on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .primitives import PATTERNS, Materials

_MASK32 = 0xFFFFFFFF
_PRIMES = (73856093, 19349663, 83492791)  # spread lattice coordinates before mixing


def _hash01(key: Tensor) -> Tensor:
    """A pseudo-random value in [0, 1) per int64 lattice key (an avalanche integer mix)."""
    h = key & _MASK32
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & _MASK32
    h = ((h ^ (h >> 12)) * 0x297A2D39) & _MASK32
    h = h ^ (h >> 15)
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def value_noise(q: Tensor) -> Tensor:
    """Smooth lattice noise in [0, 1] at points q [N, 3] (trilinear with smoothstep weights)."""
    cell = torch.floor(q)
    f = q - cell
    w = f * f * (3.0 - 2.0 * f)
    lattice = cell.to(torch.int64)
    keys = [(lattice[:, a] * p, lattice[:, a] * p + p) for a, p in enumerate(_PRIMES)]  # per axis: cell, cell + 1
    corner = [[[_hash01(x ^ y ^ z) for z in keys[2]] for y in keys[1]] for x in keys[0]]
    along_x = [[torch.lerp(corner[0][j][k], corner[1][j][k], w[:, 0]) for k in (0, 1)] for j in (0, 1)]
    along_y = [torch.lerp(along_x[0][k], along_x[1][k], w[:, 1]) for k in (0, 1)]
    return torch.lerp(along_y[0], along_y[1], w[:, 2])


def fractal_noise(q: Tensor, octaves: int = 3) -> Tensor:
    """Sum of noise octaves of halving amplitude, normalised to [0, 1]."""
    total, amplitude, norm = torch.zeros_like(q[:, 0]), 1.0, 0.0
    for k in range(octaves):
        total = total + amplitude * value_noise(q * (2.0**k) + 17.31 * k)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def albedo(materials: Materials, material: Tensor, local: Tensor) -> Tensor:
    """Surface colour [N, 3] in [0, 1] of hits with material indices [N] at local positions [N, 3]."""
    freq = materials.frequency[material][:, None]
    q = local * freq + materials.offset[material]
    pattern = materials.pattern[material]

    checker = (torch.floor(q).sum(-1).remainder(2.0) > 0.5).to(q.dtype)
    stripes = (torch.remainder((q * materials.axis[material]).sum(-1), 1.0) < 0.5).to(q.dtype)
    mix = torch.where(pattern == PATTERNS.index("checker"), checker, stripes)
    smooth_rows = torch.nonzero(pattern >= PATTERNS.index("noise")).squeeze(-1)
    if smooth_rows.numel():
        smooth = fractal_noise(q[smooth_rows])
        blobs = ((smooth - 0.45) / 0.1).clamp(0.0, 1.0)
        mix[smooth_rows] = torch.where(pattern[smooth_rows] == PATTERNS.index("noise"), smooth, blobs)

    base = torch.lerp(materials.colour_a[material], materials.colour_b[material], mix[:, None])
    detail = 0.65 + 0.7 * value_noise(q * 4.0 + 5.17)  # fine texture everywhere, even on flat colours
    return (base * detail[:, None]).clamp(0.0, 1.0)
