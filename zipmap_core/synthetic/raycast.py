"""Analytic ray casting against the primitive tables of a `Scene`.

Rays are cast from one viewpoint at a time (a camera centre), so everything that depends only
on the origin and a primitive is computed once per primitive, and what remains per ray is a few
matrix products. Each primitive kind is intersected with all rays at once ([N, P] distances),
the nearest hit over all kinds wins, and only for the winning primitive are the surface normal
and the texturing position computed. The ray parameter of a hit is in units of the direction,
so directions scaled to unit z in the camera give z-depth directly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .primitives import Boxes, Cylinders, Rects, Scene, Spheres

MIN_T = 1e-4  # hits closer than this (in ray units) are ignored
_TINY = 1e-12


@dataclass(frozen=True)
class Hits:
    """Nearest hits of N rays; `t` is inf and `material` -1 where a ray hits nothing."""

    t: Tensor  # [N]
    normal: Tensor  # [N, 3] unit, not yet turned towards the ray
    material: Tensor  # [N] long
    local: Tensor  # [N, 3] hit position in the primitive's own frame (texture space)


def _positive(t: Tensor, ok: Tensor) -> Tensor:
    return torch.where(ok & (t > MIN_T), t, torch.full_like(t, float("inf")))


def _safe(x: Tensor) -> Tensor:
    return torch.where(x.abs() < _TINY, torch.full_like(x, _TINY), x)


def _roots(a: Tensor, half_b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Both roots of a t^2 + 2 half_b t + c = 0 (a > 0) and whether they are real."""
    disc = half_b * half_b - a * c
    root = disc.clamp_min(0).sqrt()
    inv_a = 1.0 / _safe(a)
    return (-half_b - root) * inv_a, (-half_b + root) * inv_a, disc >= 0


# ---- rectangles -------------------------------------------------------------------------------


def _rects_t(r: Rects, o: Tensor, d: Tensor) -> Tensor:
    normal = torch.linalg.cross(r.u, r.v, dim=-1)
    co = r.centre - o
    denom = d @ normal.T
    t = (co * normal).sum(-1) / _safe(denom)
    a = t * (d @ r.u.T) - (co * r.u).sum(-1)
    b = t * (d @ r.v.T) - (co * r.v).sum(-1)
    ok = (denom.abs() > _TINY) & (a.abs() <= r.half[:, 0]) & (b.abs() <= r.half[:, 1])
    return _positive(t, ok)


def _rects_surface(r: Rects, idx: Tensor, hit: Tensor) -> tuple[Tensor, Tensor]:
    u, v = r.u[idx], r.v[idx]
    rel = hit - r.centre[idx]
    local = torch.stack([(rel * u).sum(-1), (rel * v).sum(-1), torch.zeros_like(rel[:, 0])], dim=-1)
    return torch.linalg.cross(u, v, dim=-1), local


# ---- spheres ----------------------------------------------------------------------------------


def _spheres_t(s: Spheres, o: Tensor, d: Tensor) -> Tensor:
    oc = o - s.centre
    a = (d * d).sum(-1, keepdim=True)
    t0, t1, real = _roots(a, d @ oc.T, (oc * oc).sum(-1) - s.radius**2)
    return _positive(torch.where(t0 > MIN_T, t0, t1), real)


def _spheres_surface(s: Spheres, idx: Tensor, hit: Tensor) -> tuple[Tensor, Tensor]:
    local = hit - s.centre[idx]
    return torch.nn.functional.normalize(local, dim=-1), local


# ---- oriented boxes ---------------------------------------------------------------------------


def _boxes_t(b: Boxes, o: Tensor, d: Tensor) -> Tensor:
    p = b.centre.shape[0]
    o_local = (b.rotation @ (o - b.centre).unsqueeze(-1)).squeeze(-1)  # [P, 3]
    inv_d = 1.0 / _safe((d @ b.rotation.reshape(p * 3, 3).T).reshape(-1, p, 3))  # [N, P, 3]
    t1 = (-b.half - o_local) * inv_d
    t2 = (b.half - o_local) * inv_d
    t_in = torch.minimum(t1, t2).amax(-1)
    t_out = torch.maximum(t1, t2).amin(-1)
    return _positive(torch.where(t_in > MIN_T, t_in, t_out), t_out >= t_in)


def _boxes_surface(b: Boxes, idx: Tensor, hit: Tensor) -> tuple[Tensor, Tensor]:
    rotation = b.rotation[idx]
    local = (rotation @ (hit - b.centre[idx]).unsqueeze(-1)).squeeze(-1)
    axis = (local.abs() / b.half[idx]).argmax(-1)
    normal_local = torch.nn.functional.one_hot(axis, 3).to(local.dtype)
    normal_local = normal_local * torch.sign(local.gather(-1, axis[:, None]))
    normal = (rotation.transpose(-1, -2) @ normal_local.unsqueeze(-1)).squeeze(-1)
    return normal, local


# ---- upright cylinders ------------------------------------------------------------------------


def _cylinders_t(c: Cylinders, o: Tensor, d: Tensor) -> Tensor:
    rel = o - c.base  # [P, 3]
    dz = d[:, 2:3]
    a = (d[:, :2] ** 2).sum(-1, keepdim=True)
    t0, t1, real = _roots(a, d[:, :2] @ rel[:, :2].T, (rel[:, :2] ** 2).sum(-1) - c.radius**2)
    side_ok = real & (a > _TINY)

    def on_side(t: Tensor) -> Tensor:
        z = rel[:, 2] + t * dz
        return _positive(t, side_ok & (z >= 0) & (z <= c.height))

    def on_cap(z_cap: Tensor) -> Tensor:
        t = (z_cap - rel[:, 2]) / _safe(dz)
        x, y = rel[:, 0] + t * d[:, 0:1], rel[:, 1] + t * d[:, 1:2]
        return _positive(t, c.capped & (dz.abs() > _TINY) & (x * x + y * y <= c.radius**2))

    t = torch.minimum(on_side(t0), on_side(t1))
    if bool(c.capped.any()):
        t = torch.minimum(t, torch.minimum(on_cap(torch.zeros_like(c.height)), on_cap(c.height)))
    return t


def _cylinders_surface(c: Cylinders, idx: Tensor, hit: Tensor) -> tuple[Tensor, Tensor]:
    local = hit - c.base[idx]
    radius, height = c.radius[idx], c.height[idx]
    radial = local[:, :2].norm(dim=-1)
    to_side = (radial - radius).abs()
    to_top, to_bottom = (local[:, 2] - height).abs(), local[:, 2].abs()
    side = torch.cat([local[:, :2] / radial.clamp_min(_TINY)[:, None], torch.zeros_like(radial[:, None])], -1)
    cap_z = torch.where(to_top < to_bottom, 1.0, -1.0).to(local.dtype)
    cap = torch.stack([torch.zeros_like(cap_z), torch.zeros_like(cap_z), cap_z], dim=-1)
    use_cap = c.capped[idx] & (torch.minimum(to_top, to_bottom) < to_side)
    return torch.where(use_cap[:, None], cap, side), local


# ---- all kinds together -----------------------------------------------------------------------

_KINDS = (
    ("rects", _rects_t, _rects_surface),
    ("spheres", _spheres_t, _spheres_surface),
    ("boxes", _boxes_t, _boxes_surface),
    ("cylinders", _cylinders_t, _cylinders_surface),
)


def _cast_chunk(scene: Scene, origin: Tensor, d: Tensor) -> Hits:
    n = d.shape[0]
    best_t = d.new_full((n, len(_KINDS)), float("inf"))
    best_idx = torch.zeros((n, len(_KINDS)), dtype=torch.long, device=d.device)
    for k, (name, intersect, _) in enumerate(_KINDS):
        table = getattr(scene, name)
        if len(table.material):
            best_t[:, k], best_idx[:, k] = intersect(table, origin, d).min(dim=1)
    t, kind = best_t.min(dim=-1)
    normal, local = torch.zeros_like(d), torch.zeros_like(d)
    material = torch.full_like(kind, -1)
    for k, (name, _, surface) in enumerate(_KINDS):
        rows = torch.nonzero((kind == k) & torch.isfinite(t)).squeeze(-1)
        if rows.numel() == 0:
            continue
        table = getattr(scene, name)
        idx = best_idx[rows, k]
        n_rows, local_rows = surface(table, idx, origin + d[rows] * t[rows, None])
        normal[rows], local[rows], material[rows] = n_rows, local_rows, table.material[idx]
    return Hits(t=t, normal=normal, material=material, local=local)


def cast_rays(scene: Scene, origin: Tensor, dirs: Tensor, chunk: int = 1 << 16) -> Hits:
    """Nearest hits of rays [N, 3] leaving one point `origin` [3] (chunked to bound memory)."""
    parts = [_cast_chunk(scene, origin, dirs[i : i + chunk]) for i in range(0, len(dirs), chunk)]
    if len(parts) == 1:
        return parts[0]
    return Hits(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Hits)))
