"""Camera paths through a scene layout: orbit, walk-through and forward motion.

Each path returns camera centres and look-at targets [S, 3] (float64); the motion per frame is
tied to the layout's `step`, so longer sequences travel further instead of moving slower.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .rng import Rng
from .scenes import Layout

TRAJECTORIES = ("orbit", "walkthrough", "forward")


def _progress(num_frames: int) -> Tensor:
    """Normalised time in [0, 1] per frame."""
    if num_frames == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)


def _clamp_xy(points: Tensor, layout: Layout) -> Tensor:
    lo = torch.tensor(layout.free_min, dtype=points.dtype)
    hi = torch.tensor(layout.free_max, dtype=points.dtype)
    return torch.cat([torch.maximum(torch.minimum(points[:, :2], hi), lo), points[:, 2:]], dim=-1)


def _heading_targets(eyes: Tensor, yaw: Tensor, pitch: Tensor) -> Tensor:
    """Targets one metre ahead of each eye along a yaw (about z) and pitch (up positive)."""
    direction = torch.stack(
        [torch.cos(yaw) * torch.cos(pitch), torch.sin(yaw) * torch.cos(pitch), torch.sin(pitch)], dim=-1
    )
    return eyes + direction


def _wobble(rng: Rng, t: Tensor, amplitude: float, cycles: tuple[float, float] = (0.5, 1.5)) -> Tensor:
    """A slow sinusoid over the sequence: small, smooth deviations from the ideal path."""
    return amplitude * torch.sin(2 * math.pi * rng.uniform(*cycles) * t + rng.uniform(0, 2 * math.pi))


def _room_along(layout: Layout, start: tuple[float, float], angle: float) -> float:
    """Distance from `start` to the free-box boundary along `angle`."""
    limits = []
    for axis, d in enumerate((math.cos(angle), math.sin(angle))):
        if abs(d) > 1e-9:
            bound = layout.free_max[axis] if d > 0 else layout.free_min[axis]
            limits.append((bound - start[axis]) / d)
    return max(0.0, min(limits))


_LOOK_AHEAD = 10.0  # steps of free space wanted beyond the end of a walk, so it does not end facing a wall


def _open_direction(rng: Rng, layout: Layout, start: tuple[float, float], wanted: float, tries: int = 16) -> float:
    """A random heading from `start` with `wanted` metres of free space ahead, or the most open
    of `tries` random headings."""
    best, best_room = 0.0, -1.0
    for _ in range(tries):
        angle = rng.uniform(0, 2 * math.pi)
        room = _room_along(layout, start, angle)
        if room >= wanted:
            return angle
        if room > best_room:
            best, best_room = angle, room
    return best


def orbit(rng: Rng, layout: Layout, num_frames: int) -> tuple[Tensor, Tensor]:
    """An arc around the focus at roughly constant radius and height, looking at the focus."""
    fx, fy, fz = layout.focus
    max_radius = min(fx - layout.free_min[0], layout.free_max[0] - fx, fy - layout.free_min[1], layout.free_max[1] - fy)
    min_radius = min(layout.focus_radius + 0.8, 0.8 * max_radius)
    radius = rng.uniform(min_radius, max_radius)
    step = (layout.step / radius) * rng.uniform(0.7, 1.3)
    span = min(step * max(num_frames - 1, 0), 1.5 * math.pi)
    t = _progress(num_frames)
    angle = rng.uniform(0, 2 * math.pi) + rng.sign() * span * t
    r = radius * (1.0 + _wobble(rng, t, 0.05))
    height = rng.uniform(*layout.eye_height) + _wobble(rng, t, 0.1 * (layout.eye_height[1] - layout.eye_height[0]))
    eyes = torch.stack([fx + r * torch.cos(angle), fy + r * torch.sin(angle), height], dim=-1)
    jitter = 0.15 * layout.focus_radius
    targets = torch.stack(
        [fx + _wobble(rng, t, jitter), fy + _wobble(rng, t, jitter), fz + _wobble(rng, t, 0.5 * jitter)], dim=-1
    )
    return _clamp_xy(eyes, layout), targets


def walkthrough(rng: Rng, layout: Layout, num_frames: int) -> tuple[Tensor, Tensor]:
    """A smooth curved walk (a quadratic Bezier inside the free box) looking where it goes,
    with slight yaw changes and a downward glance."""
    lo, hi = layout.free_min, layout.free_max
    start = (rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]))
    length = layout.step * max(num_frames - 1, 0) * rng.uniform(0.8, 1.2)
    angle = _open_direction(rng, layout, start, length + _LOOK_AHEAD * layout.step)
    length = min(length, _room_along(layout, start, angle))
    a = torch.tensor(start, dtype=torch.float64)
    c = a + length * torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    bend = rng.uniform(-0.15, 0.15) * length  # the heading turns by at most 2 atan(0.3) = 33 degrees
    b = (a + c) / 2 + bend * torch.tensor([-math.sin(angle), math.cos(angle)], dtype=torch.float64)
    b = torch.maximum(torch.minimum(b, torch.tensor(hi, dtype=torch.float64)), torch.tensor(lo, dtype=torch.float64))

    t = _progress(num_frames)[:, None]
    xy = (1 - t) ** 2 * a + 2 * t * (1 - t) * b + t**2 * c
    tangent = 2 * (1 - t) * (b - a) + 2 * t * (c - b)
    t = t.squeeze(-1)
    heading = torch.where(
        tangent.norm(dim=-1) > 1e-9, torch.atan2(tangent[:, 1], tangent[:, 0]), torch.full_like(t, angle)
    )
    yaw = heading + _wobble(rng, t, math.radians(rng.uniform(3.0, 10.0)), cycles=(0.5, 2.0))
    pitch = -math.radians(rng.uniform(5.0, 15.0)) + _wobble(rng, t, math.radians(2.0))
    height = rng.uniform(*layout.eye_height) + _wobble(rng, t, 0.03, cycles=(1.0, 3.0))
    eyes = _clamp_xy(torch.cat([xy, height[:, None]], dim=-1), layout)
    return eyes, _heading_targets(eyes, yaw, pitch)


def forward(rng: Rng, layout: Layout, num_frames: int) -> tuple[Tensor, Tensor]:
    """A dolly forward along a straight line with a small lateral sway, looking ahead."""
    lo, hi = layout.free_min, layout.free_max
    start = (rng.uniform(lo[0], hi[0]), rng.uniform(lo[1], hi[1]))
    wanted = layout.step * max(num_frames - 1, 0) * rng.uniform(0.8, 1.2)
    angle = _open_direction(rng, layout, start, wanted + _LOOK_AHEAD * layout.step)
    length = min(wanted, 0.9 * _room_along(layout, start, angle))
    t = _progress(num_frames)
    along = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
    across = torch.tensor([-math.sin(angle), math.cos(angle)], dtype=torch.float64)
    sway = _wobble(rng, t, rng.uniform(0.03, 0.1) * max(length, 2 * layout.step), cycles=(0.5, 1.5))
    xy = torch.tensor(start, dtype=torch.float64) + (length * t)[:, None] * along + sway[:, None] * across
    height = rng.uniform(*layout.eye_height) + _wobble(rng, t, 0.03, cycles=(1.0, 3.0))
    eyes = _clamp_xy(torch.cat([xy, height[:, None]], dim=-1), layout)
    yaw = angle + _wobble(rng, t, math.radians(3.0))
    pitch = -math.radians(rng.uniform(3.0, 12.0)) + _wobble(rng, t, math.radians(1.5))
    return eyes, _heading_targets(eyes, yaw, pitch)


_PATHS: dict[str, Callable[[Rng, Layout, int], tuple[Tensor, Tensor]]] = {
    "orbit": orbit,
    "walkthrough": walkthrough,
    "forward": forward,
}


def camera_path(kind: str, rng: Rng, layout: Layout, num_frames: int) -> tuple[Tensor, Tensor]:
    """Camera centres and look-at targets [S, 3] of a path kind."""
    try:
        path = _PATHS[kind]
    except KeyError:
        raise ValueError(f"unknown trajectory kind {kind!r}; known: {list(TRAJECTORIES)}") from None
    return path(rng, layout, num_frames)
