"""Turning a sequence's frame predictions into its output files (schemas documented in docs/pipeline.md).

The writer consumes frames as the engine streams them out and keeps only small per-frame rows
in memory; point clouds and depth maps go to spool files, so memory does not grow with the
length of the sequence.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zipmap_core.engines.results import FramePrediction

from .layout import DEPTH, FRAMES, POINTS, RunLayout
from .pointcloud import PointCloudBuilder, VoxelSums, frame_points, voxel_sums
from .redaction import redact_uri
from .spec import JobSpec
from .storage import Store

FRAMES_SCHEMA = pa.schema(
    [
        ("sequence_id", pa.string()),
        ("frame_index", pa.int32()),
        ("source_uri", pa.string()),
        ("width", pa.int32()),  # of the model input / depth map (what the intrinsics refer to)
        ("height", pa.int32()),
        ("source_width", pa.int32()),  # of the original image
        ("source_height", pa.int32()),
        ("extrinsic", pa.list_(pa.float32(), 12)),  # world-to-camera 3x4, row-major
        ("intrinsic", pa.list_(pa.float32(), 9)),  # 3x3, row-major
        ("depth_min", pa.float32()),  # statistics over valid depth (finite and > 0)
        ("depth_max", pa.float32()),
        ("depth_mean", pa.float32()),
        ("depth_median", pa.float32()),
        ("valid_depth_fraction", pa.float32()),
        ("num_points", pa.int64()),  # pixels that passed the point filter (before voxels)
        ("camera_conf", pa.float32()),
    ]
)

DEPTH_SCHEMA = pa.schema(
    [
        ("sequence_id", pa.string()),
        ("frame_index", pa.int32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("depth", pa.list_(pa.float32())),  # height * width values, row-major
        ("depth_conf", pa.list_(pa.float32())),
    ]
)


def depth_statistics(depth: np.ndarray) -> dict[str, float | None]:
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if valid.size == 0:
        return {
            "depth_min": None,
            "depth_max": None,
            "depth_mean": None,
            "depth_median": None,
            "valid_depth_fraction": 0.0,
        }
    return {
        "depth_min": float(valid.min()),
        "depth_max": float(valid.max()),
        "depth_mean": float(valid.mean(dtype=np.float64)),
        "depth_median": float(np.median(valid)),
        "valid_depth_fraction": float(valid.size / depth.size),
    }


@dataclass
class StagedOutputs:
    """What one attempt left in its staging folder."""

    files: dict[str, str]  # output kind -> staged URI
    num_frames: int
    num_points: int


@dataclass
class PreparedFrame:
    """One frame's output rows and points, ready to append."""

    row: dict
    points: np.ndarray | None  # PLY vertices (without voxels)
    depth: pa.Table | None  # its DEPTH_SCHEMA row, when depth maps are saved
    voxels: tuple[VoxelSums, VoxelSums] | None = None  # the points' per-voxel sums (with voxels)


@dataclass(frozen=True)
class FrameFormat:
    """The sequence-level settings `prepare_frame` needs. It travels with every frame to a writer
    process, so it holds nothing that grows with the sequence (frame URIs and source sizes are
    added to the row by `SequenceWriter.add_prepared`)."""

    sequence_id: str
    conf_threshold: float | None  # None: no point cloud
    save_depth: bool
    voxel_size: float | None = None


def prepare_frame(fmt: FrameFormat, frame: FramePrediction) -> PreparedFrame:
    """The expensive, per-pixel part of writing a frame (unprojection, filtering, packing, summing
    per voxel: the sequence's grid then only merges sums)."""
    points = voxels = None
    if fmt.conf_threshold is not None:
        points = frame_points(frame.depth, frame.depth_conf, frame.world_points, frame.image, fmt.conf_threshold)
    row = {
        "sequence_id": fmt.sequence_id,
        "frame_index": frame.index,
        "width": frame.width,
        "height": frame.height,
        "extrinsic": np.asarray(frame.extrinsic, np.float32).reshape(12).tolist(),
        "intrinsic": np.asarray(frame.intrinsic, np.float32).reshape(9).tolist(),
        **depth_statistics(frame.depth),
        "num_points": 0 if points is None else len(points),
        "camera_conf": float(frame.camera_conf),
    }
    if points is not None and fmt.voxel_size:
        points, voxels = None, voxel_sums(points, fmt.voxel_size)
    depth = _depth_row(fmt.sequence_id, frame) if fmt.save_depth else None
    return PreparedFrame(row, points, depth, voxels)


def _depth_row(sequence_id: str, frame: FramePrediction) -> pa.Table:
    depth = np.asarray(frame.depth, np.float32).reshape(-1)
    conf = np.asarray(frame.depth_conf, np.float32).reshape(-1)
    return pa.Table.from_arrays(
        [
            pa.array([sequence_id]),
            pa.array([frame.index], pa.int32()),
            pa.array([frame.height], pa.int32()),
            pa.array([frame.width], pa.int32()),
            pa.ListArray.from_arrays(pa.array([0, depth.size], pa.int32()), pa.array(depth)),
            pa.ListArray.from_arrays(pa.array([0, conf.size], pa.int32()), pa.array(conf)),
        ],
        schema=DEPTH_SCHEMA,
    )


@dataclass
class SequenceWriter:
    """Collects one sequence's frames and writes its staged files for one attempt."""

    spec: JobSpec
    sequence_id: str
    frame_uris: list[str]
    source_sizes: list[tuple[int, int]]
    _rows: list[dict] = field(default_factory=list)
    _points: PointCloudBuilder | None = None
    _depth_path: str | None = None
    _depth_writer: pq.ParquetWriter | None = None

    def __post_init__(self) -> None:
        pc = self.spec.point_cloud
        if pc.enabled:
            self._points = PointCloudBuilder(pc.voxel_size)
        if self.spec.save_depth:
            fd, self._depth_path = tempfile.mkstemp(suffix=".parquet")
            os.close(fd)
            self._depth_writer = pq.ParquetWriter(self._depth_path, DEPTH_SCHEMA)

    @property
    def frame_format(self) -> FrameFormat:
        pc = self.spec.point_cloud
        if not pc.enabled:
            return FrameFormat(self.sequence_id, None, self.spec.save_depth)
        return FrameFormat(self.sequence_id, pc.conf_threshold, self.spec.save_depth, pc.voxel_size)

    def add_prepared(self, prepared: PreparedFrame) -> None:
        """Append a prepared frame; frames must come in order."""
        index = prepared.row["frame_index"]
        src_w, src_h = self.source_sizes[index]
        source = redact_uri(self.frame_uris[index])
        row = {**prepared.row, "source_uri": source, "source_width": src_w, "source_height": src_h}
        if prepared.voxels is not None:
            self._points.add_voxel_sums(prepared.voxels)
        elif prepared.points is not None:
            self._points.add_points(prepared.points)
        self._rows.append(row)
        if prepared.depth is not None:
            self._depth_writer.write_table(prepared.depth)

    def finish(self, store: Store, layout: RunLayout, attempt_id: str) -> StagedOutputs:
        """Write all staged files; returns where they are."""
        files: dict[str, str] = {}
        sid = self.sequence_id
        files[FRAMES] = layout.staged(sid, attempt_id, FRAMES)
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(self._rows, schema=FRAMES_SCHEMA), buf)
        store.write_bytes(files[FRAMES], buf.getvalue())
        num_points = 0
        if self._points is not None:
            files[POINTS] = layout.staged(sid, attempt_id, POINTS)
            with store.open(files[POINTS], "wb") as f:
                num_points = self._points.write(f, comment=f"zipmap-pipeline sequence {sid}")
        if self._depth_writer is not None:
            self._depth_writer.close()
            self._depth_writer = None
            files[DEPTH] = layout.staged(sid, attempt_id, DEPTH)
            store.upload(self._depth_path, files[DEPTH])
        return StagedOutputs(files=files, num_frames=len(self._rows), num_points=num_points)

    def close(self) -> None:
        """Release spool files (safe to call more than once)."""
        if self._points is not None:
            self._points.close()
        if self._depth_writer is not None:
            self._depth_writer.close()
            self._depth_writer = None
        if self._depth_path and os.path.exists(self._depth_path):
            os.unlink(self._depth_path)
