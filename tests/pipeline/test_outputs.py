"""Point clouds, PLY files and output rows, on a local store (no Ray)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from pipeline.layout import RunLayout
from pipeline.outputs import depth_statistics
from pipeline.pointcloud import PointCloudBuilder, VoxelGrid, frame_points, voxel_sums
from pipeline.storage import Store

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


def _smooth_frame(index: int, h: int = 48, w: int = 64):
    from zipmap_core.engines.results import FramePrediction

    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = 2.0 + 0.01 * xx + 0.02 * yy + rng.normal(0, 1e-3, (h, w)).astype(np.float32)  # a slanted wall
    conf = 1.0 + np.exp(rng.normal(0.5, 0.2, (h, w))).astype(np.float32)
    K = np.array([[50, 0, w / 2], [0, 50, h / 2], [0, 0, 1]], np.float32)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return FramePrediction(index, np.eye(3, 4, dtype=np.float32), K, depth, conf, image, float(conf.mean()))


def test_depth_table_row_groups_and_compression(tmp_path, monkeypatch):
    """Depth maps go out in row groups of several frames (not one per frame), compressed with zstd
    over byte-stream-split floats: smaller than the raw float32 maps (one snappy row group per
    frame made them 1.3 times larger)."""
    import pyarrow.parquet as pq

    import pipeline.outputs as outputs
    from pipeline.layout import DEPTH
    from pipeline.outputs import SequenceWriter, prepare_frame
    from pipeline.spec import load_spec
    from pipeline.tables import read_metadata

    frames = [_smooth_frame(i) for i in range(5)]
    frame_bytes = frames[0].depth.nbytes * 2
    monkeypatch.setattr(outputs, "DEPTH_ROW_GROUP_BYTES", 2 * frame_bytes)  # two frames a row group
    spec = load_spec({
        "input": {"prefix": str(tmp_path)}, "output": str(tmp_path / "out"), "run_id": "r",
        "model": {"preset": "tiny", "allow_random_weights": True}, "save_depth": True,
        "point_cloud": {"enabled": False},
    })
    writer = SequenceWriter(spec, "s", [f"f{i}" for i in range(5)], [(64, 48)] * 5, engine={"mode": "offline"})
    for f in frames:
        writer.add_prepared(prepare_frame(writer.frame_format, f))
    store, layout = Store(spec.run_uri), RunLayout(spec.run_uri)
    staged = writer.finish(store, layout, "a1")
    writer.close()
    part = pq.ParquetFile(staged.files[DEPTH])
    assert [part.metadata.row_group(i).num_rows for i in range(part.metadata.num_row_groups)] == [2, 2, 1]
    # against the raw float32 maps and the way depth was written before (a snappy row group a frame)
    size, raw = os.path.getsize(staged.files[DEPTH]), frame_bytes * len(frames)
    before = io.BytesIO()
    with pq.ParquetWriter(before, part.schema_arrow) as old:
        for i in range(len(frames)):
            old.write_table(part.read_row_group(i // 2).slice(i % 2, 1))
    assert size < 0.8 * raw and size < 0.6 * len(before.getvalue()), (size, raw, len(before.getvalue()))
    assert read_metadata(part.schema_arrow)["engine"] == {"mode": "offline"}
    table = part.read()
    assert "sequence_id" not in table.column_names  # the partition key lives in the path
    for row, f in zip(table.to_pylist(), frames):
        np.testing.assert_array_equal(np.asarray(row["depth"], np.float32).reshape(48, 64), f.depth)
        np.testing.assert_array_equal(np.asarray(row["depth_conf"], np.float32).reshape(48, 64), f.depth_conf)


@pytest.mark.parametrize("q", [0, 1, 33.3, 50, 99.9, 100])
@pytest.mark.parametrize("kind", ["spread", "ties", "one_bin"])
def test_confidence_percentile_is_numpys(q, kind):
    """Streamed in batches, read back once: the same threshold as np.percentile over everything,
    with many ties and with every value inside one 16-bit histogram bin."""
    from pipeline.pointcloud import ConfidencePercentile

    rng = np.random.default_rng(int(q * 10) + len(kind))
    values = {
        "spread": 1 + np.exp(rng.normal(0, 1, 5001)),
        "ties": rng.choice([1.0, 2.0, 2.5, 7.0], 4000),
        "one_bin": 1 + rng.random(3000) * 1e-3,
    }[kind].astype(np.float32)
    percentile = ConfidencePercentile(q)
    for batch in np.array_split(values, 7):
        percentile.add(batch)
    threshold = percentile.threshold(lambda: np.array_split(values, 3))
    assert threshold == pytest.approx(float(np.percentile(values, q)), rel=1e-7)
    np.testing.assert_array_equal(values >= threshold, values >= np.percentile(values, q))


@pytest.mark.parametrize("voxel_size", [None, 0.5])
def test_point_cloud_percentile_over_the_whole_sequence(voxel_size):
    """The released demo's rule: one percentile for the sequence (not per frame); each frame's
    kept points are counted once it is known."""
    rng = np.random.default_rng(5)
    frames = [_frame(rng, 10, 12) for _ in range(4)]
    frames[2][1][:] *= 2  # a frame more confident than the others keeps more than half its points
    candidates = [frame_points(*f, 1.0) for f in frames]
    cut = np.percentile(np.concatenate([p["confidence"] for p in candidates]), 50)
    kept = [p[p["confidence"] >= cut] for p in candidates]
    builder = PointCloudBuilder(voxel_size, percentile=50)
    for points in candidates:
        builder.add_points(points)
    buf = io.BytesIO()
    n = builder.write(buf)
    builder.close()
    ply = parse_ply(buf.getvalue())
    assert builder.kept_per_frame == [len(k) for k in kept]
    assert builder.kept_per_frame[2] > len(candidates[2]) / 2 > builder.kept_per_frame[0]
    want = np.concatenate(kept)
    if voxel_size is None:
        assert n == len(want)
        for key in ("x", "green", "confidence"):
            np.testing.assert_array_equal(ply[key], want[key])
    else:
        assert_voxel_means(ply, {k: want[k] for k in want.dtype.names}, voxel_size)


def test_confidence_floor_of_the_released_demo():
    """conf <= 1e-5 never becomes a point, whatever the threshold (visual_util.predictions_to_glb)."""
    rng = np.random.default_rng(3)
    depth, conf, pts, img = _frame(rng)
    conf[2, :] = 1e-6
    points = frame_points(depth, conf, pts, img, -1.0)
    assert len(points) == (np.isfinite(depth) & (depth > 0) & (conf > 1e-5)).sum()
