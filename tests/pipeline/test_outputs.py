"""Point clouds, PLY files and output rows, on a local store (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.outputs import depth_statistics
from pipeline.pointcloud import PointCloudBuilder, VoxelGrid, frame_points, voxel_sums

from .conftest import assert_voxel_means, parse_ply


def _frame(rng, h=6, w=5):
    depth = rng.uniform(0.5, 3, (h, w)).astype(np.float32)
    depth[0, 0] = np.nan
    depth[0, 1] = -1
    conf = rng.uniform(1, 3, (h, w)).astype(np.float32)
    pts = rng.normal(size=(h, w, 3)).astype(np.float32)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return depth, conf, pts, img


def test_ply_round_trip_and_filter():
    rng = np.random.default_rng(0)
    frames = [_frame(rng) for _ in range(3)]
    builder = PointCloudBuilder()
    kept = [builder.add_points(frame_points(*f, 2.0)) for f in frames]
    buf = io.BytesIO()
    n = builder.write(buf, comment="test")
    builder.close()
    ply = parse_ply(buf.getvalue())
    assert n == sum(kept) == len(ply["x"])
    depth, conf, pts, img = frames[0]
    mask = np.isfinite(depth) & (depth > 0) & (conf >= 2.0)
    assert kept[0] == mask.sum()
    np.testing.assert_array_equal(ply["x"][: kept[0]], pts[..., 0][mask])
    np.testing.assert_array_equal(ply["green"][: kept[0]], img[..., 1][mask])
    np.testing.assert_array_equal(ply["confidence"][: kept[0]], conf[mask])


def test_frame_points_drop_every_non_finite_pixel():
    rng = np.random.default_rng(2)
    depth, conf, pts, img = _frame(rng, 8, 7)
    depth[1, 0], conf[1, 1], conf[1, 2], pts[1, 3, 2], pts[1, 4, 0] = np.inf, np.nan, np.inf, np.nan, -np.inf
    points = frame_points(depth, conf, pts, img, 1.5)
    mask = (
        np.isfinite(depth) & (depth > 0) & np.isfinite(conf) & (conf >= 1.5) & np.isfinite(pts).all(axis=-1)
    )
    assert len(points) == mask.sum() > 0
    for name, column in [("x", pts[..., 0]), ("z", pts[..., 2]), ("blue", img[..., 2]), ("confidence", conf)]:
        np.testing.assert_array_equal(points[name], column[mask])


def test_voxel_grid_averages_per_voxel():
    rng = np.random.default_rng(1)
    depth, conf, pts, img = _frame(rng, 20, 20)
    points = frame_points(depth, conf, pts, img, 0.0)
    grid = VoxelGrid(0.5)
    grid.add(points[: len(points) // 2])
    grid._consolidate()  # merging in two rounds must equal one round
    grid.add(points[len(points) // 2 :])
    assert_voxel_means(grid.result(), points, 0.5)


@pytest.mark.parametrize("far", [False, True])
def test_voxel_grid_merges_per_frame_sums(far):
    """Frames summed apart (as the writer processes do), merged over several rounds, with voxels
    inside and (far=True) outside the packed-key range, equal averaging all points at once."""
    rng = np.random.default_rng(2)
    frames = [frame_points(*_frame(rng, 12, 12), 0.0) for _ in range(6)]
    if far:  # a few points about 2**21 voxels out, and one on the far side of int64
        for f in frames[::2]:
            f["x"][:3] += np.float32(2**21 * 0.25)
        frames[1]["z"][0] = -3e38
    points = np.concatenate(frames)
    grid = VoxelGrid(0.25)
    for i, f in enumerate(frames):
        grid.add_sums(voxel_sums(f, 0.25))
        if i % 2:
            grid._consolidate()
    out = grid.result()
    assert (len(grid._far.keys) > 0) == far
    if far:  # the point past int64 (its index is clipped) is a voxel of its own, kept
        assert (out["z"] == np.float32(-3e38)).sum() == 1
        out = out[out["z"] > -1e30]
    assert_voxel_means(out, points[points["z"] > -1e30], 0.25)


def test_depth_statistics_ignore_invalid():
    depth = np.array([[np.nan, -1.0], [2.0, 4.0]], np.float32)
    stats = depth_statistics(depth)
    assert stats == {
        "depth_min": 2.0,
        "depth_max": 4.0,
        "depth_mean": 3.0,
        "depth_median": 3.0,
        "valid_depth_fraction": 0.5,
    }
    assert depth_statistics(np.full((2, 2), np.nan, np.float32))["depth_mean"] is None
