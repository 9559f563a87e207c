import math

import torch

from zipmap_core.geometry import (
    align_to_first_view,
    cameras_to_pose_encoding,
    invert_rigid,
    local_to_world,
    matrix_to_quaternion,
    pose_encoding_to_cameras,
    quaternion_to_matrix,
    to_homogeneous,
    unproject_depth,
)


def random_rotations(n: int) -> torch.Tensor:
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return quaternion_to_matrix(q)


def test_quaternion_round_trip_and_proper_rotation():
    R = random_rotations(64)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=R.dtype).expand(64, 3, 3), atol=1e-10)
    assert torch.allclose(torch.linalg.det(R), torch.ones(64, dtype=R.dtype))
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-10)


def test_pose_encoding_round_trip():
    R = random_rotations(5)
    t = torch.randn(5, 3, 1, dtype=R.dtype)
    ext = torch.cat([R, t], dim=-1)
    K = torch.tensor([[300.0, 0, 91], [0, 280.0, 70], [0, 0, 1]], dtype=R.dtype).expand(5, 3, 3)
    enc = cameras_to_pose_encoding(ext, K, (140, 182))
    ext2, K2 = pose_encoding_to_cameras(enc, (140, 182))
    assert torch.allclose(ext2, ext, atol=1e-10) and torch.allclose(K2, K, atol=1e-8)


def test_zero_field_of_view_gives_finite_intrinsics():
    enc = torch.zeros(1, 9)
    enc[0, 6] = 1.0
    _, K = pose_encoding_to_cameras(enc, (14, 14))
    assert torch.isfinite(K).all()


def test_align_to_first_view():
    R = random_rotations(4)
    ext = torch.cat([R, torch.randn(4, 3, 1, dtype=R.dtype)], dim=-1)
    aligned = align_to_first_view(ext)
    assert torch.allclose(aligned[0], torch.eye(3, 4, dtype=R.dtype), atol=1e-10)
    # relative poses are unchanged
    rel = lambda e, i, j: to_homogeneous(e[i]) @ torch.linalg.inv(to_homogeneous(e[j]))  # noqa: E731
    assert torch.allclose(rel(aligned, 2, 3), rel(ext, 2, 3), atol=1e-10)


def test_unprojection_projects_back():
    R = random_rotations(1)[0]
    ext = torch.cat([R, torch.tensor([[0.1], [0.2], [0.3]], dtype=R.dtype)], dim=-1)
    K = torch.tensor([[50.0, 0, 16], [0, 50.0, 12], [0, 0, 1]], dtype=R.dtype)
    depth = 1 + torch.rand(24, 32, dtype=R.dtype)
    world = unproject_depth(depth, ext, K)
    cam = world @ ext[:, :3].T + ext[:, 3]
    assert torch.allclose(cam[..., 2], depth, atol=1e-10)
    uv = (cam @ K.T)[..., :2] / cam[..., 2:]
    v, u = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    assert torch.allclose(uv[..., 0], u.double(), atol=1e-8) and torch.allclose(uv[..., 1], v.double(), atol=1e-8)


def test_local_to_world_per_camera():
    R = random_rotations(3)
    ext = torch.cat([R, torch.randn(3, 3, 1, dtype=R.dtype)], dim=-1)
    points = torch.randn(3, 5, 7, 3, dtype=R.dtype)
    world = local_to_world(points, ext)
    assert world.shape == points.shape
    c2w = invert_rigid(ext)
    for i in range(3):
        expected = points[i] @ c2w[i, :, :3].T + c2w[i, :, 3]
        assert torch.allclose(world[i], expected, atol=1e-12)
    assert torch.allclose(local_to_world(points[0], ext[0]), world[0], atol=1e-12)  # no batch dimension


def test_invert_rigid():
    R = random_rotations(3)
    T = torch.cat([R, torch.randn(3, 3, 1, dtype=R.dtype)], dim=-1)
    eye = to_homogeneous(T) @ to_homogeneous(invert_rigid(T))
    assert torch.allclose(eye, torch.eye(4, dtype=R.dtype).expand(3, 4, 4), atol=1e-10)
    assert math.isclose(float(torch.linalg.det(R[0])), 1.0, rel_tol=1e-9)
