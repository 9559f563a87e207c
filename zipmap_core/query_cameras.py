"""Cameras to render novel views from: given explicitly, on an orbit, or along the input path.

Conventions are the reconstruction's own (the frames table's): extrinsics world-to-camera [3, 4],
OpenCV axes (x right, y down, z forward), world = the first input camera, the model's units;
intrinsics [3, 3] in pixels of the rendered size. The JSON form, used by the CLI and written next
to every render:

    {"height": 392, "width": 518,
     "cameras": [{"extrinsic": [[r00, r01, r02, t0], [...], [...]], "intrinsic": [[fx, 0, cx], [...], [...]]}]}

(4x4 extrinsics and flat row-major lists of 12 / 16 and 9 values are accepted too.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from zipmap_core.geometry import invert_rigid, matrix_to_quaternion, quaternion_to_matrix


@dataclass(frozen=True)
class QueryCameras:
    extrinsics: torch.Tensor  # [K, 3, 4] world-to-camera
    intrinsics: torch.Tensor  # [K, 3, 3] pixels of image_hw
    image_hw: tuple[int, int]

    def __post_init__(self) -> None:
        K = self.extrinsics.shape[0]
        if self.extrinsics.shape != (K, 3, 4) or self.intrinsics.shape != (K, 3, 3):
            raise ValueError(
                f"expected extrinsics [K, 3, 4] and intrinsics [K, 3, 3], got {tuple(self.extrinsics.shape)} "
                f"and {tuple(self.intrinsics.shape)}"
            )
        if K == 0:
            raise ValueError("no cameras to render")
        if min(self.image_hw) <= 0:
            raise ValueError(f"image size must be positive, got {self.image_hw}")

    def __len__(self) -> int:
        return self.extrinsics.shape[0]

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_hw: tuple[int, int] | None = None) -> QueryCameras:
        """The JSON form above; `height`/`width` default to `default_hw` (the input frames' size)."""
        cameras = data.get("cameras")
        if not isinstance(cameras, list) or not cameras:
            raise ValueError('cameras: expected {"cameras": [{"extrinsic": ..., "intrinsic": ...}, ...]}')
        if ("height" in data) != ("width" in data):
            raise ValueError("cameras: give both height and width, or neither")
        hw = (int(data["height"]), int(data["width"])) if "height" in data else default_hw
        if hw is None:
            raise ValueError("cameras: no image size (height, width) given")
        ext, intr = [], []
        for i, cam in enumerate(cameras):
            try:
                ext.append(_matrix(cam["extrinsic"], {12: (3, 4), 16: (4, 4)})[:3])
                intr.append(_matrix(cam["intrinsic"], {9: (3, 3)}))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"cameras[{i}]: needs 'extrinsic' (3x4 or 4x4) and 'intrinsic' (3x3): {exc}") from None
        return cls(torch.stack(ext), torch.stack(intr), hw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.image_hw[0],
            "width": self.image_hw[1],
            "cameras": [
                {"extrinsic": e.tolist(), "intrinsic": k.tolist()}
                for e, k in zip(self.extrinsics.double(), self.intrinsics.double())
            ],
        }


def _matrix(value: Any, shapes: dict[int, tuple[int, int]]) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.numel() not in shapes:
        raise ValueError(f"{t.numel()} values")
    t = t.reshape(shapes[t.numel()])
    if not torch.isfinite(t).all():
        raise ValueError("non-finite values")
    return t


def look_at(centres: torch.Tensor, target: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """World-to-camera [N, 3, 4] of cameras at `centres` [N, 3] looking at `target` [3], with the
    image's y axis as close as possible to the world direction `down` [3]."""
    z = target - centres
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(down.expand_as(z), z, dim=-1)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x, dim=-1)
    cam_to_world = torch.cat([torch.stack([x, y, z], dim=-1), centres[..., None]], dim=-1)
    return invert_rigid(cam_to_world)


def orbit(
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    image_hw: tuple[int, int],
    n: int,
    target_depth: float,
    radius: float | None = None,
) -> QueryCameras:
    """`n` views on a circle around the input cameras' mean pose, in its image plane, all
    looking at the point `target_depth` ahead of it (the scene's centre, e.g. the median depth).
    The radius defaults to the input cameras' spread around their mean, at least 10% of
    `target_depth`: the orbit stays where the sequence saw the scene from."""
    if n < 1:
        raise ValueError(f"an orbit needs at least one view, got {n}")
    if not target_depth > 0:
        raise ValueError(f"target_depth must be positive, got {target_depth}")
    cam_to_world = invert_rigid(extrinsics.double())
    centres = cam_to_world[:, :, 3]
    centre = centres.mean(dim=0)
    U, _, Vh = torch.linalg.svd(cam_to_world[:, :, :3].mean(dim=0))  # the mean rotation
    R = U @ Vh
    if torch.det(R) < 0:
        R = U @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=R.dtype)) @ Vh
    right, down, forward = R[:, 0], R[:, 1], R[:, 2]
    if radius is None:
        offsets = centres - centre
        spread = (offsets - (offsets @ forward)[:, None] * forward).norm(dim=-1).max().item()
        radius = max(spread, 0.1 * target_depth)
    angles = torch.arange(n, dtype=R.dtype) * (2 * math.pi / n)
    ring = centre + radius * (angles.cos()[:, None] * right + angles.sin()[:, None] * down)
    ext = look_at(ring, centre + target_depth * forward, down).float()
    return QueryCameras(ext, intrinsics.float().mean(dim=0).expand(n, 3, 3).clone(), image_hw)


def interpolate(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int], steps: int
) -> QueryCameras:
    """A smooth path through the input cameras: `steps` views from each camera towards the next
    (rotations by spherical interpolation, centres and intrinsics linearly), then the last one."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cam_to_world = invert_rigid(extrinsics.double())
    quats = matrix_to_quaternion(cam_to_world[:, :, :3])
    centres, K = cam_to_world[:, :, 3], intrinsics.double()
    poses, intr = [], []
    for i in range(len(quats) - 1):
        t = torch.arange(steps, dtype=torch.float64) / steps
        rot = quaternion_to_matrix(slerp(quats[i], quats[i + 1], t))
        pos = centres[i] + t[:, None] * (centres[i + 1] - centres[i])
        poses.append(torch.cat([rot, pos[..., None]], dim=-1))
        intr.append(K[i] + t[:, None, None] * (K[i + 1] - K[i]))
    poses.append(cam_to_world[-1:])
    intr.append(K[-1:])
    return QueryCameras(invert_rigid(torch.cat(poses)).float(), torch.cat(intr).float(), image_hw)


def slerp(q0: torch.Tensor, q1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [4] at fractions t [N] of the shortest arc from q0 to q1 -> [N, 4]."""
    q0, q1 = q0 / q0.norm(), q1 / q1.norm()
    dot = torch.dot(q0, q1)
    if dot < 0:  # q and -q are the same rotation: take the short way
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear interpolation is exact enough and stable
        q = q0 + t[:, None] * (q1 - q0)
    else:
        theta = torch.arccos(dot)
        q = (torch.sin((1 - t) * theta)[:, None] * q0 + torch.sin(t * theta)[:, None] * q1) / torch.sin(theta)
    return q / q.norm(dim=-1, keepdim=True)
