"""Cameras by direct photometric alignment: each frame's pose relative to the previous one is the
rigid motion that best maps the previous frame's pixels, lifted to 3D with its predicted depth,
onto the colours of the frame (Gauss-Newton, Huber-weighted, coarse to fine, with a per-pair
affine brightness correction).

Why it exists: the network's depth can be good while its camera head is not (the small bundled
demo models; bench/exp/README.md); with depth and intrinsics known, relative pose is a six-number
least-squares problem that classical direct methods (LSD-SLAM, DSO) solve well. Poses are
chained frame to frame, so the first frame keeps its camera and the scale is the depth's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zipmap_core.geometry import camera_points, resized_intrinsics

LEVELS = 4  # image pyramid levels (each halves the side): the coarsest sees motion of ~8x a pixel
ITERATIONS = 10  # Gauss-Newton steps per level (most converge in 3-5)
HUBER = 0.1  # colour residual (images in [0, 1]) beyond which a pixel's weight decays as 1/|r|
MIN_SIDE = 16  # pixels: the coarsest level used is no smaller than this on its short side
_PARAMS = 8  # rotation (3), translation (3), brightness gain and offset (2)
MIN_OVERLAP = 0.5  # a step may not leave fewer than this fraction of the points its level started with in view


def skew(v: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] cross-product matrices."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*v.shape, 3)


def rotation_exp(w: Tensor) -> Tensor:
    """Rotation matrix [3, 3] of an axis-angle vector [3] (Rodrigues)."""
    theta = w.norm()
    k = skew(w / theta.clamp_min(1e-12))
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + torch.sin(theta) * k + (1 - torch.cos(theta)) * (k @ k)


def _motion(step: Tensor) -> Tensor:
    """4x4 rigid motion of a 6-vector (axis-angle, translation)."""
    m = torch.eye(4, dtype=step.dtype, device=step.device)
    m[:3, :3] = rotation_exp(step[:3])
    m[:3, 3] = step[3:6]
    return m


def _pyramid(x: Tensor, levels: int) -> list[Tensor]:
    out = [x]
    for _ in range(levels - 1):
        out.append(F.avg_pool2d(out[-1][None], 2)[0])
    return out


def _gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    gx, gy = torch.zeros_like(image), torch.zeros_like(image)
    gx[..., 1:-1] = (image[..., 2:] - image[..., :-2]) / 2
    gy[..., 1:-1, :] = (image[..., 2:, :] - image[..., :-2, :]) / 2
    return gx, gy


class _Level:
    """One pyramid level of a frame pair: the source's 3D points and colours, the target's
    colours and gradients, sampled at projected points."""

    def __init__(self, source: Tensor, depth: Tensor, k_source: Tensor, target: Tensor, k_target: Tensor):
        keep = (torch.isfinite(depth) & (depth > 0)).reshape(-1)
        self.points = camera_points(depth, k_source).reshape(-1, 3)[keep]
        self.colours = source.reshape(source.shape[0], -1).T[keep]  # [N, C]
        self.k = k_target
        self.size = tuple(depth.shape)
        self.target = torch.cat([target, *_gradients(target)])  # [3C, h, w]: colours, d/du, d/dv

    def sample(self, pose: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Target-camera points [N, 3], target colours and their u / v gradients [N, C], and the
        mask of points that land inside the target image in front of it."""
        p = self.points @ pose[:3, :3].T + pose[:3, 3]
        z = p[:, 2].clamp_min(1e-6)
        u = self.k[0, 0] * p[:, 0] / z + self.k[0, 2]
        v = self.k[1, 1] * p[:, 1] / z + self.k[1, 2]
        h, w = self.size
        grid = torch.stack([(u + 0.5) / w * 2 - 1, (v + 0.5) / h * 2 - 1], -1)
        values = F.grid_sample(self.target[None], grid[None, None], align_corners=False, padding_mode="border")
        values = values[0, :, 0].T  # [N, 3C]
        c = self.colours.shape[1]
        inside = (p[:, 2] > 1e-6) & (grid.abs() < 1 - 2 / min(h, w)).all(-1)
        return p, values[:, :c], values[:, c : 2 * c], values[:, 2 * c :], inside

    def residuals(self, pose: Tensor, brightness: Tensor) -> tuple[Tensor, Tensor]:
        """Colour residuals [N, C] of the points inside the target, and that mask [N]."""
        _, colours, _, _, inside = self.sample(pose)
        return colours[inside] * (1 + brightness[0]) + brightness[1] - self.colours[inside], inside

    def objective(self, pose: Tensor, brightness: Tensor) -> tuple[float, int]:
        """What the steps minimise, the mean Huber cost per colour value of the points inside the
        target, and how many points are inside."""
        residual, inside = self.residuals(pose, brightness)
        a = residual.abs()
        huber = torch.where(a <= HUBER, a * a / 2, HUBER * (a - HUBER / 2))
        count = int(inside.sum())
        return (float(huber.mean()) if count else math.inf), count

    def colour_error(self, pose: Tensor, brightness: Tensor) -> float:
        """Mean absolute colour error of the points inside the target (inf when none is)."""
        residual, inside = self.residuals(pose, brightness)
        return float(residual.abs().mean()) if inside.any() else float("inf")

    def step(self, pose: Tensor, brightness: Tensor, damping: float) -> tuple[Tensor, Tensor] | None:
        """One damped Gauss-Newton (Levenberg-Marquardt) step of (pose, brightness), or None when
        nothing overlaps."""
        p, colours, gu, gv, inside = self.sample(pose)
        if int(inside.sum()) < _PARAMS:
            return None
        p, colours, gu, gv = p[inside], colours[inside], gu[inside], gv[inside]
        gain = 1 + brightness[0]
        residual = colours * gain + brightness[1] - self.colours[inside]  # [N, C]
        z = p[:, 2]
        fx, fy = self.k[0, 0], self.k[1, 1]
        zero = torch.zeros_like(z)
        du = torch.stack([fx / z, zero, -fx * p[:, 0] / z**2], -1)  # d(u)/d(point) [N, 3]
        dv = torch.stack([zero, fy / z, -fy * p[:, 1] / z**2], -1)
        d_colour = gain * (gu[..., None] * du[:, None] + gv[..., None] * dv[:, None])  # [N, C, 3]
        # a left perturbation exp(delta) * pose moves a point p by -[p]x dw + dt
        eye = torch.eye(3, dtype=p.dtype, device=p.device).expand(p.shape[0], 3, 3)
        d_point = torch.cat([-skew(p), eye], -1)  # [N, 3, 6]
        jac = torch.cat([d_colour @ d_point, colours[..., None], torch.ones_like(colours)[..., None]], -1)
        jac, r = jac.reshape(-1, _PARAMS), residual.reshape(-1)
        weight = HUBER / r.abs().clamp_min(HUBER)
        hessian = jac.T @ (jac * weight[:, None])
        hessian = hessian.double()
        hessian = hessian + damping * torch.diag(hessian.diagonal().clamp_min(1e-12))
        delta = torch.linalg.solve(hessian, -(jac.T @ (r * weight)).double())
        delta = delta.to(r.dtype)
        return _motion(delta[:6]) @ pose, brightness + delta[6:]


def align_pair(
    source: Tensor,
    source_depth: Tensor,
    source_intrinsics: Tensor,
    target: Tensor,
    target_intrinsics: Tensor,
    initial: Sequence[Tensor] = (),
    *,
    levels: int = LEVELS,
    iterations: int = ITERATIONS,
) -> tuple[Tensor, float]:
    """Target-from-source rigid motion [4, 4] and its final mean colour error.

    `source`, `target`: images [C, H, W] in [0, 1]; `source_depth` [H, W] (non-positive or
    non-finite pixels are ignored); intrinsics [3, 3] in pixels. Every pose of `initial` (plus
    the identity) is refined at the coarsest level; the one that fits best goes on to the finer
    levels. A step that does not lower the objective is not taken, so a pair that cannot be
    aligned (no texture, no overlap) keeps its best start rather than drifting off.
    """
    dtype, device = source.dtype, source.device
    levels = max(1, min(levels, 1 + int(math.log2(max(min(source.shape[-2:]) / MIN_SIDE, 1)))))
    images = zip(
        _pyramid(source, levels), _pyramid(source_depth[None], levels), _pyramid(target, levels), strict=True
    )
    pyramid = []
    for i, (s, d, t) in enumerate(images):
        f = 0.5**i
        pyramid.append(_Level(s, d[0], resized_intrinsics(source_intrinsics, f, f), t,
                              resized_intrinsics(target_intrinsics, f, f)))
    brightness = torch.zeros(2, dtype=dtype, device=device)
    starts = [torch.eye(4, dtype=dtype, device=device), *(p.to(device, dtype) for p in initial)]
    # the start that fits best at the coarsest level goes on to the finer ones
    _, pose, brightness = min((_refine(pyramid[-1], start, brightness, iterations) for start in starts),
                              key=lambda fit: fit[0])
    for level in reversed(range(levels - 1)):
        _, pose, brightness = _refine(pyramid[level], pose, brightness, iterations)
    return pose, pyramid[0].colour_error(pose, brightness)


def _refine(level: _Level, pose: Tensor, brightness: Tensor, iterations: int) -> tuple[float, Tensor, Tensor]:
    """Levenberg-Marquardt: a step is kept only if it lowers the objective without moving most of
    the scene out of view (a cheap way to lower it), else it is damped more."""
    cost, count = level.objective(pose, brightness)
    floor, damping = MIN_OVERLAP * count, 1e-6
    for _ in range(iterations):
        stepped = level.step(pose, brightness, damping)
        if stepped is None:
            break
        new_cost, new_count = level.objective(*stepped)
        if new_cost >= cost or new_count < floor:
            damping *= 100
            if damping > 1e4:
                break
            continue
        moved = float((stepped[0] - pose).abs().max())
        (pose, brightness), cost, damping = stepped, new_cost, max(damping / 10, 1e-6)
        if moved < 1e-6:
            break
    return cost, pose, brightness


class CameraChain:
    """Cameras of frames handed in one at a time, in order: the first keeps the camera it comes
    with (default: identity); each later one is aligned to its predecessor, starting from the
    identity and from the previous motion (constant velocity). Holds one frame."""

    def __init__(self) -> None:
        self._previous: tuple[Tensor, Tensor, Tensor] | None = None  # image, depth, intrinsics
        self._pose = self._motion = torch.eye(4)

    def add(self, image: Tensor, depth: Tensor, intrinsics: Tensor, extrinsic: Tensor | None = None) -> Tensor:
        """Camera-from-world extrinsic [3, 4] of the next frame: `image` [C, H, W] in [0, 1],
        `depth` [H, W], `intrinsics` [3, 3]; `extrinsic` is used for the first frame only."""
        if self._previous is None:
            self._pose = self._motion = torch.eye(4, dtype=image.dtype, device=image.device)
            if extrinsic is not None:
                self._pose = self._pose.clone()
                self._pose[:3] = extrinsic.to(image)
        else:
            self._motion, _ = align_pair(*self._previous, image, intrinsics, [self._motion])
            self._pose = self._motion @ self._pose
        self._previous = (image, depth, intrinsics)
        return self._pose[:3]


def photometric_cameras(
    images: Tensor, depth: Tensor, intrinsics: Tensor, first: Tensor | None = None
) -> Tensor:
    """Camera-from-world extrinsics [S, 3, 4] of a sequence (`CameraChain` over its frames):
    `images` [S, C, H, W] in [0, 1], `depth` [S, H, W], `intrinsics` [S, 3, 3]; the first frame
    keeps `first` (default: identity)."""
    chain = CameraChain()
    return torch.stack([chain.add(images[i], depth[i], intrinsics[i], first) for i in range(images.shape[0])])
