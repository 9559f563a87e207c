"""The analytic primitives a synthetic scene is made of, stored as batched tensors.

Each primitive kind is one table of tensors (one row per primitive) so that the ray caster can
intersect every ray with every primitive of a kind in one vectorised step. Every primitive refers
to a row of the material table by index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

PATTERNS = ("checker", "stripes", "noise", "blobs")


def _to(obj, device: torch.device | str):
    return replace(obj, **{f.name: getattr(obj, f.name).to(device) for f in fields(obj)})


@dataclass(frozen=True)
class Rects:
    """Bounded planes: centre + a*u + b*v with |a| <= half[0], |b| <= half[1]; normal u x v."""

    centre: Tensor  # [P, 3]
    u: Tensor  # [P, 3] unit
    v: Tensor  # [P, 3] unit, orthogonal to u
    half: Tensor  # [P, 2]
    material: Tensor  # [P] long


@dataclass(frozen=True)
class Spheres:
    centre: Tensor  # [P, 3]
    radius: Tensor  # [P]
    material: Tensor  # [P] long


@dataclass(frozen=True)
class Boxes:
    """Oriented boxes: local = rotation @ (x - centre), inside when |local| <= half."""

    centre: Tensor  # [P, 3]
    rotation: Tensor  # [P, 3, 3] local-from-world
    half: Tensor  # [P, 3]
    material: Tensor  # [P] long


@dataclass(frozen=True)
class Cylinders:
    """Upright (world z) cylinders from base z to base z + height; caps are optional."""

    base: Tensor  # [P, 3] centre of the bottom disk
    radius: Tensor  # [P]
    height: Tensor  # [P]
    capped: Tensor  # [P] bool
    material: Tensor  # [P] long


@dataclass(frozen=True)
class Materials:
    """Procedural textures evaluated at texture coordinates derived from the 3D hit position."""

    pattern: Tensor  # [M] long, index into PATTERNS
    colour_a: Tensor  # [M, 3] in [0, 1]
    colour_b: Tensor  # [M, 3]
    frequency: Tensor  # [M] texture cycles per metre
    offset: Tensor  # [M, 3] shift of the texture coordinates
    axis: Tensor  # [M, 3] unit direction of stripes


@dataclass(frozen=True)
class Scene:
    """Everything the ray caster and the shader need to render a view."""

    rects: Rects
    spheres: Spheres
    boxes: Boxes
    cylinders: Cylinders
    materials: Materials
    light_dir: Tensor  # [3] unit, towards the light
    ambient: float
    sky_horizon: Tensor  # [3]
    sky_zenith: Tensor  # [3]

    def to(self, device: torch.device | str) -> Scene:
        return replace(
            self,
            rects=_to(self.rects, device),
            spheres=_to(self.spheres, device),
            boxes=_to(self.boxes, device),
            cylinders=_to(self.cylinders, device),
            materials=_to(self.materials, device),
            light_dir=self.light_dir.to(device),
            sky_horizon=self.sky_horizon.to(device),
            sky_zenith=self.sky_zenith.to(device),
        )

    @property
    def num_primitives(self) -> int:
        return sum(len(t.material) for t in (self.rects, self.spheres, self.boxes, self.cylinders))


def _yaw_matrix(yaw: float) -> list[list[float]]:
    """Local-from-world rotation of a box turned by `yaw` radians about world z."""
    c, s = math.cos(yaw), math.sin(yaw)
    return [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]


@dataclass
class SceneBuilder:
    """Collects primitives as python lists, then packs them into a `Scene`."""

    _rects: list[tuple] = field(default_factory=list)
    _spheres: list[tuple] = field(default_factory=list)
    _boxes: list[tuple] = field(default_factory=list)
    _cylinders: list[tuple] = field(default_factory=list)
    _materials: list[tuple] = field(default_factory=list)

    def material(
        self,
        pattern: str,
        colour_a: list[float],
        colour_b: list[float],
        frequency: float,
        offset: list[float],
        axis: list[float],
    ) -> int:
        self._materials.append((PATTERNS.index(pattern), colour_a, colour_b, frequency, offset, axis))
        return len(self._materials) - 1

    def rect(self, centre, u, v, half_u: float, half_v: float, material: int) -> None:
        self._rects.append((centre, u, v, (half_u, half_v), material))

    def sphere(self, centre, radius: float, material: int) -> None:
        self._spheres.append((centre, radius, material))

    def box(self, centre, half, yaw: float, material: int) -> None:
        self._boxes.append((centre, _yaw_matrix(yaw), half, material))

    def cylinder(self, base, radius: float, height: float, capped: bool, material: int) -> None:
        self._cylinders.append((base, radius, height, capped, material))

    def build(self, light_dir, ambient: float, sky_horizon, sky_zenith) -> Scene:
        f32 = torch.float32

        def column(rows: list[tuple], i: int, shape: tuple[int, ...], dtype=f32) -> Tensor:
            return torch.tensor([r[i] for r in rows], dtype=dtype).reshape(len(rows), *shape)

        r, s, b, c, m = self._rects, self._spheres, self._boxes, self._cylinders, self._materials
        light = torch.nn.functional.normalize(torch.tensor(light_dir, dtype=f32), dim=0)
        return Scene(
            rects=Rects(column(r, 0, (3,)), column(r, 1, (3,)), column(r, 2, (3,)), column(r, 3, (2,)),
                        column(r, 4, (), torch.long)),
            spheres=Spheres(column(s, 0, (3,)), column(s, 1, ()), column(s, 2, (), torch.long)),
            boxes=Boxes(column(b, 0, (3,)), column(b, 1, (3, 3)), column(b, 2, (3,)),
                        column(b, 3, (), torch.long)),
            cylinders=Cylinders(column(c, 0, (3,)), column(c, 1, ()), column(c, 2, ()),
                                column(c, 3, (), torch.bool), column(c, 4, (), torch.long)),
            materials=Materials(column(m, 0, (), torch.long), column(m, 1, (3,)), column(m, 2, (3,)),
                                column(m, 3, ()), column(m, 4, (3,)), column(m, 5, (3,))),
            light_dir=light,
            ambient=float(ambient),
            sky_horizon=torch.tensor(sky_horizon, dtype=f32),
            sky_zenith=torch.tensor(sky_zenith, dtype=f32),
        )
