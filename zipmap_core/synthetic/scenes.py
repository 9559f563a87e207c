"""Procedural scene kinds: a furnished room, an object studio and open terrain.

A scene is planned in two steps. `plan_scene` lays out the fixed structure (walls, ground,
backdrop) and says where cameras may move; once the camera path is known, `ScenePlan.finish`
scatters the objects, keeping clear of every camera so that no view starts inside a solid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .primitives import PATTERNS, Scene, SceneBuilder
from .rng import Rng

SCENES = ("room", "objects", "terrain")


@dataclass(frozen=True)
class Layout:
    """Where cameras may go and what they should look at (metres, world z up)."""

    focus: tuple[float, float, float]  # the point of interest, centre of the object cluster
    focus_radius: float  # horizontal radius of the object cluster
    free_min: tuple[float, float]  # xy box the cameras stay in
    free_max: tuple[float, float]
    eye_height: tuple[float, float]  # range of camera heights
    step: float  # typical camera displacement between frames


Placement = Callable[[SceneBuilder, Rng, Tensor], None]


@dataclass
class ScenePlan:
    """The fixed part of a scene plus the pending object placements."""

    kind: str
    layout: Layout
    builder: SceneBuilder
    light_dir: list[float]
    ambient: float
    sky_horizon: list[float] = field(default_factory=lambda: [0.85, 0.88, 0.92])
    sky_zenith: list[float] = field(default_factory=lambda: [0.35, 0.55, 0.85])
    placements: list[Placement] = field(default_factory=list)

    def finish(self, rng: Rng, eyes: Tensor) -> Scene:
        """Places the objects away from the camera centres `eyes` [S, 3] and packs the scene."""
        for place in self.placements:
            place(self.builder, rng, eyes)
        return self.builder.build(self.light_dir, self.ambient, self.sky_horizon, self.sky_zenith)


# ---- materials --------------------------------------------------------------------------------


def random_material(
    builder: SceneBuilder, rng: Rng, frequency: tuple[float, float], patterns: tuple[str, ...] = PATTERNS
) -> int:
    """A textured material: two contrasting colours and a pattern at a random scale."""
    colour_a = rng.colour(0.3, 0.95)
    if rng.uniform() < 0.5:
        shade = rng.uniform(0.2, 0.5)
        colour_b = [min(1.0, max(0.0, c * shade + rng.uniform(-0.1, 0.1))) for c in colour_a]
    else:
        colour_b = rng.colour(0.05, 0.9)
        if sum(abs(a - b) for a, b in zip(colour_a, colour_b)) < 0.6:  # keep the pattern visible
            colour_b = [1.0 - c for c in colour_a]
    return builder.material(
        pattern=rng.choice(patterns),
        colour_a=colour_a,
        colour_b=colour_b,
        frequency=rng.uniform(*frequency),
        offset=rng.uniforms(3, 0.0, 100.0),
        axis=rng.unit_vector(),
    )


def _sun(rng: Rng) -> list[float]:
    azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(35), math.radians(75))
    return [math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation), math.sin(elevation)]


# ---- objects ----------------------------------------------------------------------------------


def _clear_of(eyes: Tensor, centre: tuple[float, float, float], radius: float, clearance: float) -> bool:
    if eyes.numel() == 0:
        return True
    gap = (eyes - torch.tensor(centre, dtype=eyes.dtype)).norm(dim=-1).min()
    return bool(gap > radius + clearance)


def _random_prop(rng: Rng, x: float, y: float, s: float) -> tuple[tuple[float, float, float], float, Callable]:
    """One sphere, box or cylinder of size `s` standing at (x, y): its bounding sphere and adder."""
    shape = rng.choice(("sphere", "box", "cylinder"))
    if shape == "sphere":
        z = s + (rng.uniform(0.0, 0.6) if rng.uniform() < 0.25 else 0.0)
        return (x, y, z), s, lambda b, m: b.sphere((x, y, z), s, m)
    if shape == "box":
        half = (s * rng.uniform(0.6, 1.4), s * rng.uniform(0.6, 1.4), s * rng.uniform(0.5, 1.5))
        yaw = rng.uniform(0, math.pi)
        return (x, y, half[2]), math.hypot(*half), lambda b, m: b.box((x, y, half[2]), half, yaw, m)
    radius, height = s * rng.uniform(0.5, 1.0), s * rng.uniform(1.0, 3.0)
    bound = math.hypot(radius, height / 2)
    return (x, y, height / 2), bound, lambda b, m: b.cylinder((x, y, 0.0), radius, height, True, m)


def props(
    count: tuple[int, int],
    centre: tuple[float, float],
    half_extent: tuple[float, float],
    size: tuple[float, float],
    clearance: float,
) -> Placement:
    """Spheres, boxes and cylinders standing on the ground inside an xy box, clear of the cameras."""

    def place(builder: SceneBuilder, rng: Rng, eyes: Tensor) -> None:
        wanted, placed = rng.integer(*count), 0
        for _ in range(40 * max(wanted, 1)):
            if placed >= wanted:
                break
            s = rng.uniform(*size)
            x = centre[0] + rng.uniform(-half_extent[0], half_extent[0])
            y = centre[1] + rng.uniform(-half_extent[1], half_extent[1])
            bound_centre, bound, add = _random_prop(rng, x, y, s)
            if _clear_of(eyes, bound_centre, bound, clearance):
                add(builder, random_material(builder, rng, (1.5 / s, 4.0 / s)))
                placed += 1

    return place


def _random_hill(rng: Rng, x: float, y: float, r: float) -> tuple[tuple[float, float, float], float, Callable]:
    """A partly buried sphere (a hill) or flat box (a rock) of size `r` at (x, y)."""
    if rng.uniform() < 0.7:
        centre = (x, y, -r * rng.uniform(0.45, 0.8))
        return centre, r, lambda b, m: b.sphere(centre, r, m)
    half = (r * rng.uniform(0.2, 0.5), r * rng.uniform(0.2, 0.5), r * rng.uniform(0.1, 0.3))
    centre, yaw = (x, y, half[2] * rng.uniform(0.0, 0.7)), rng.uniform(0, math.pi)
    return centre, math.hypot(*half), lambda b, m: b.box(centre, half, yaw, m)


def hills(count: tuple[int, int], spread: float, radius: tuple[float, float], clearance: float) -> Placement:
    """The bumps of a terrain, scattered over a disk of radius `spread`, clear of the cameras."""

    def place(builder: SceneBuilder, rng: Rng, eyes: Tensor) -> None:
        wanted, placed = rng.integer(*count), 0
        for _ in range(40 * max(wanted, 1)):
            if placed >= wanted:
                break
            r = rng.uniform(*radius)
            angle, dist = rng.uniform(0, 2 * math.pi), spread * math.sqrt(rng.uniform())
            bound_centre, bound, add = _random_hill(rng, dist * math.cos(angle), dist * math.sin(angle), r)
            if _clear_of(eyes, bound_centre, bound, clearance):
                add(builder, random_material(builder, rng, (0.15, 0.6), ("noise", "blobs")))
                placed += 1

    return place


# ---- scene kinds ------------------------------------------------------------------------------


def plan_room(rng: Rng) -> ScenePlan:
    """An axis-aligned box seen from inside, furnished with a few objects."""
    width, depth, height = rng.uniform(4.0, 8.0), rng.uniform(4.0, 8.0), rng.uniform(2.5, 3.5)
    b = SceneBuilder()
    seam = 1e-3  # walls overlap slightly so that no ray slips through a corner
    hw, hd, hh = width / 2, depth / 2, height / 2
    floor = random_material(b, rng, (0.8, 2.0), ("checker", "noise", "stripes", "blobs"))
    b.rect((0.0, 0.0, 0.0), (1, 0, 0), (0, 1, 0), hw + seam, hd + seam, floor)
    b.rect((0.0, 0.0, height), (1, 0, 0), (0, 1, 0), hw + seam, hd + seam, random_material(b, rng, (0.8, 2.5)))
    for sx in (-1.0, 1.0):
        b.rect((sx * hw, 0.0, hh), (0, 1, 0), (0, 0, 1), hd + seam, hh + seam, random_material(b, rng, (1.0, 3.0)))
    for sy in (-1.0, 1.0):
        b.rect((0.0, sy * hd, hh), (1, 0, 0), (0, 0, 1), hw + seam, hh + seam, random_material(b, rng, (1.0, 3.0)))

    margin = 0.6
    focus = (rng.uniform(-0.3, 0.3) * hw, rng.uniform(-0.3, 0.3) * hd, 0.6)
    layout = Layout(
        focus=focus,
        focus_radius=0.8,
        free_min=(-hw + margin, -hd + margin),
        free_max=(hw - margin, hd - margin),
        eye_height=(1.2, min(1.8, height - 0.4)),
        step=0.15,
    )
    plan = ScenePlan("room", layout, b, light_dir=_sun(rng), ambient=rng.uniform(0.35, 0.5))
    plan.placements.append(props((1, 3), focus[:2], (0.6, 0.6), (0.2, 0.45), clearance=0.4))
    plan.placements.append(props((2, 5), (0.0, 0.0), (hw - 0.4, hd - 0.4), (0.2, 0.5), clearance=0.4))
    return plan


def plan_objects(rng: Rng) -> ScenePlan:
    """A cluster of objects on a floor inside a closed cylindrical studio backdrop."""
    radius, height = rng.uniform(7.0, 10.0), rng.uniform(4.0, 6.0)
    b = SceneBuilder()
    b.rect((0.0, 0.0, 0.0), (1, 0, 0), (0, 1, 0), radius, radius,
           random_material(b, rng, (0.8, 2.0), ("checker", "noise", "blobs")))
    b.cylinder((0.0, 0.0, -0.01), radius, height, True, random_material(b, rng, (0.3, 1.5)))
    free = radius * 0.6
    layout = Layout(
        focus=(0.0, 0.0, 0.5),
        focus_radius=1.8,
        free_min=(-free, -free),
        free_max=(free, free),
        eye_height=(0.9, 2.2),
        step=0.25,
    )
    plan = ScenePlan("objects", layout, b, light_dir=_sun(rng), ambient=rng.uniform(0.3, 0.45))
    plan.placements.append(props((5, 9), (0.0, 0.0), (1.8, 1.8), (0.2, 0.6), clearance=0.5))
    plan.placements.append(props((2, 5), (0.0, 0.0), (free, free), (0.3, 0.8), clearance=0.5))
    return plan


def plan_terrain(rng: Rng) -> ScenePlan:
    """Open ground with buried-sphere hills, rocks and objects, ringed by a distant wall; the sky
    above the wall is left without depth."""
    b = SceneBuilder()
    b.rect((0.0, 0.0, 0.0), (1, 0, 0), (0, 1, 0), 100.0, 100.0,
           random_material(b, rng, (0.2, 0.6), ("noise", "blobs")))
    wall_radius = rng.uniform(45.0, 60.0)
    b.cylinder((0.0, 0.0, -1.0), wall_radius, rng.uniform(12.0, 20.0), False,
               random_material(b, rng, (0.1, 0.4), ("noise", "blobs", "stripes")))
    free = 18.0
    layout = Layout(
        focus=(0.0, 0.0, 1.0),
        focus_radius=2.5,
        free_min=(-free, -free),
        free_max=(free, free),
        eye_height=(1.5, 3.0),
        step=0.6,
    )
    plan = ScenePlan(
        "terrain", layout, b, light_dir=_sun(rng), ambient=rng.uniform(0.3, 0.45),
        sky_horizon=[0.8, 0.85, 0.9], sky_zenith=rng.colour(0.3, 0.7),
    )
    plan.placements.append(hills((6, 12), spread=38.0, radius=(3.0, 9.0), clearance=1.0))
    plan.placements.append(props((3, 6), (0.0, 0.0), (2.5, 2.5), (0.3, 0.9), clearance=0.8))
    plan.placements.append(props((4, 10), (0.0, 0.0), (30.0, 30.0), (0.4, 1.5), clearance=0.8))
    return plan


_PLANNERS: dict[str, Callable[[Rng], ScenePlan]] = {
    "room": plan_room,
    "objects": plan_objects,
    "terrain": plan_terrain,
}


def plan_scene(kind: str, rng: Rng) -> ScenePlan:
    try:
        planner = _PLANNERS[kind]
    except KeyError:
        raise ValueError(f"unknown scene kind {kind!r}; known: {list(SCENES)}") from None
    return planner(rng)
