"""Synthetic capture sequences with exact ground truth, deterministic from a seed.

`generate_sequence` = `build_setup` (draw scene, camera path and intrinsics from the seed, all
on the CPU) + `render_views` (cast one ray per pixel on the requested device). The setup keeps
the analytic scene, so tests and tools can cast extra rays into exactly the same world.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .geometry import intrinsics_from_fov, look_at, pixel_grid, pixel_rays
from .primitives import Scene
from .raycast import Hits, cast_rays
from .rng import Rng
from .scenes import SCENES, plan_scene
from .shading import shade
from .trajectories import TRAJECTORIES, camera_path

MAX_DEPTH = 200.0  # hits further away than this are reported as invalid
FOV_RANGE_DEG = (50.0, 70.0)


@dataclass(frozen=True)
class SyntheticSequence:
    """Rendered frames and their exact ground truth (torch tensors on one device).

    Extrinsics are OpenCV camera-from-world; depth is z-depth along the optical axis, 0 where
    `valid` is false (sky beyond `MAX_DEPTH`); world points are 0 there too.
    """

    images: Tensor  # [S, H, W, 3] uint8
    depth: Tensor  # [S, H, W] float32
    valid: Tensor  # [S, H, W] bool
    extrinsics: Tensor  # [S, 3, 4] float32
    intrinsics: Tensor  # [S, 3, 3] float32
    world_points: Tensor  # [S, H, W, 3] float32
    scene: str
    trajectory: str
    seed: int

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def arrays(self) -> dict[str, np.ndarray]:
        """The tensors as host numpy arrays, keyed by field name."""
        names = ("images", "depth", "valid", "extrinsics", "intrinsics", "world_points")
        return {name: getattr(self, name).detach().cpu().numpy() for name in names}


@dataclass(frozen=True)
class SceneSetup:
    """Everything drawn from a seed before rendering: the world and the cameras (CPU)."""

    scene: Scene
    extrinsics: Tensor  # [S, 3, 4] float32
    intrinsics: Tensor  # [S, 3, 3] float32
    height: int
    width: int
    scene_kind: str
    trajectory_kind: str
    seed: int


def build_setup(
    seed: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    scene: str | None = None,
    trajectory: str | None = None,
) -> SceneSetup:
    """Draws a scene, a camera path and intrinsics from `seed` (the kinds at random if None)."""
    if num_frames < 1 or height < 1 or width < 1:
        raise ValueError("num_frames, height and width must be positive")
    rng = Rng(seed)
    scene_kind = rng.choice(SCENES) if scene is None else scene
    trajectory_kind = rng.choice(TRAJECTORIES) if trajectory is None else trajectory
    plan = plan_scene(scene_kind, rng)
    eyes, targets = camera_path(trajectory_kind, rng, plan.layout, num_frames)
    world = plan.finish(rng, eyes)
    intrinsic = intrinsics_from_fov(rng.uniform(*FOV_RANGE_DEG), height, width)
    return SceneSetup(
        scene=world,
        extrinsics=look_at(eyes, targets).to(torch.float32),
        intrinsics=intrinsic.to(torch.float32).expand(num_frames, 3, 3).clone(),
        height=height,
        width=width,
        scene_kind=scene_kind,
        trajectory_kind=trajectory_kind,
        seed=seed,
    )


def render_views(setup: SceneSetup, device: torch.device | str = "cpu") -> SyntheticSequence:
    """Casts one ray per pixel of every camera and shades the hits."""
    scene = setup.scene.to(device)
    extrinsics, intrinsics = setup.extrinsics.to(device), setup.intrinsics.to(device)
    s, h, w = extrinsics.shape[0], setup.height, setup.width
    uv = pixel_grid(h, w, device).expand(s, h, w, 2)
    origins, dirs = (x.reshape(s, h * w, 3) for x in pixel_rays(extrinsics, intrinsics, uv))
    per_frame = [cast_rays(scene, origins[i, 0], dirs[i]) for i in range(s)]
    hits = Hits(*(torch.cat([getattr(p, f.name) for p in per_frame]) for f in fields(Hits)))
    origins, dirs = origins.reshape(-1, 3), dirs.reshape(-1, 3)
    valid = torch.isfinite(hits.t) & (hits.t <= MAX_DEPTH)
    depth = torch.where(valid, hits.t, torch.zeros_like(hits.t))
    points = torch.where(valid[:, None], origins + dirs * depth[:, None], torch.zeros_like(origins))
    colour = shade(scene, hits, dirs, valid)
    images = (colour * 255.0).round().clamp(0, 255).to(torch.uint8)
    return SyntheticSequence(
        images=images.reshape(s, h, w, 3),
        depth=depth.reshape(s, h, w),
        valid=valid.reshape(s, h, w),
        extrinsics=extrinsics,
        intrinsics=intrinsics,
        world_points=points.reshape(s, h, w, 3),
        scene=setup.scene_kind,
        trajectory=setup.trajectory_kind,
        seed=setup.seed,
    )


def generate_sequence(
    seed: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    scene: str | None = None,
    trajectory: str | None = None,
    device: torch.device | str = "cpu",
) -> SyntheticSequence:
    """A rendered sequence with exact ground truth; the same seed always gives the same arrays."""
    setup = build_setup(seed, num_frames=num_frames, height=height, width=width, scene=scene, trajectory=trajectory)
    return render_views(setup, device)
