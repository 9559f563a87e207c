"""Turning a sequence's frame predictions into its output files (schemas documented in docs/pipeline.md).

The writer consumes frames as the engine streams them out and keeps only small per-frame rows
in memory; point clouds and depth maps go to spool files, so memory does not grow with the
length of the sequence.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from zipmap_core.engines.results import FramePrediction

from .exports.sequence import FrameData
from .exports.writers import DerivedOutputs, derived_frame_files, derived_writers
from .layout import DEPTH, FRAMES, POINTS, STATE, RunLayout
from .pointcloud import PointCloudBuilder, VoxelSums, frame_points, voxel_sums
from .redaction import redact_uri
from .spec import JobSpec
from .storage import Store
from .tables import (
    DEPTH_ROW_GROUP_BYTES,
    DEPTH_SCHEMA,
    DEPTH_WRITE_OPTIONS,
    FRAMES_SCHEMA,
    file_schema,
    table_metadata,
)

if TYPE_CHECKING:
    from zipmap_core.scene_state import SceneState

__all__ = ["DEPTH_SCHEMA", "FRAMES_SCHEMA", "FrameFormat", "PreparedFrame", "SequenceWriter", "StagedOutputs"]

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
    depth: pa.Table | None  # its depth row (DEPTH_SCHEMA but the partition key), when depth maps are saved
    voxels: tuple[VoxelSums, VoxelSums] | None = None  # the points' per-voxel sums (with voxels)
    files: dict[str, dict[str, bytes]] | None = None  # exports' and previews' frame files, by kind


@dataclass(frozen=True)
class FrameFormat:
    """The sequence-level settings `prepare_frame` needs. It travels with every frame to a writer
    process, so it holds nothing that grows with the sequence (frame URIs and source sizes are
    added to the row by `SequenceWriter.add_prepared`)."""

    sequence_id: str
    conf_threshold: float | None  # None: no point cloud
    save_depth: bool
    voxel_size: float | None = None
    derived: tuple = ()  # pipeline.exports.writers: exports and previews with frame files


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
    depth = _depth_row(frame) if fmt.save_depth else None
    files = derived_frame_files(fmt.derived, FrameData(frame.index, frame.image, frame.depth)) if fmt.derived else None
    return PreparedFrame(row, points, depth, voxels, files)


def _depth_row(frame: FramePrediction) -> pa.Table:
    depth = np.asarray(frame.depth, np.float32).reshape(-1)
    conf = np.asarray(frame.depth_conf, np.float32).reshape(-1)
    return pa.Table.from_arrays(
        [
            pa.array([frame.index], pa.int32()),
            pa.array([frame.height], pa.int32()),
            pa.array([frame.width], pa.int32()),
            pa.ListArray.from_arrays(pa.array([0, depth.size], pa.int32()), pa.array(depth)),
            pa.ListArray.from_arrays(pa.array([0, conf.size], pa.int32()), pa.array(conf)),
        ],
        schema=file_schema(DEPTH_SCHEMA),
    )


@dataclass
class SequenceWriter:
    """Collects one sequence's frames and writes its staged files for one attempt.

    Set `engine` (the resolved engine settings) before the first frame: it goes into every file's
    metadata."""

    spec: JobSpec
    sequence_id: str
    frame_uris: list[str]
    source_sizes: list[tuple[int, int]]
    engine: dict | None = None
    _rows: list[dict] = field(default_factory=list)
    _points: PointCloudBuilder | None = None
    _depth_path: str | None = None
    _depth_writer: pq.ParquetWriter | None = None
    _depth_rows: list[pa.Table] = field(default_factory=list)  # the row group being filled
    _state: SceneState | None = None  # the sequence's scene state, on the host (scene_state.enabled)
    _derived: DerivedOutputs | None = None  # exports and previews (exports:, report.enabled)

    def __post_init__(self) -> None:
        pc = self.spec.point_cloud
        if pc.enabled:
            self._points = PointCloudBuilder(pc.voxel_size, pc.confidence_percentile or None)
        if self.spec.save_depth:
            fd, self._depth_path = tempfile.mkstemp(suffix=".parquet")
            os.close(fd)
        writers = derived_writers(self.spec.exports, self.spec.report)
        if writers:
            pre = self.spec.preprocess
            self._derived = DerivedOutputs(writers, self.sequence_id, pre.size, pre.mode)

    @property
    def frame_format(self) -> FrameFormat:
        pc = self.spec.point_cloud
        derived = self._derived.writers if self._derived is not None else ()
        if not pc.enabled:
            return FrameFormat(self.sequence_id, None, self.spec.save_depth, derived=derived)
        # with a percentile the sequence's threshold is known only at the end: no per-frame voxel sums
        voxel_size = None if pc.confidence_percentile else pc.voxel_size
        return FrameFormat(self.sequence_id, pc.conf_threshold, self.spec.save_depth, voxel_size, derived)

    def keep_state(self, state: SceneState) -> None:
        """The engine's `on_state` hook: called once, while the engine holds the accelerator, so it
        only copies the fast weights to the host; `finish` writes them."""
        self._state = state.to("cpu")
        self._state.metadata.update(
            {
                "sequence_id": self.sequence_id,
                "run_id": str(self.spec.run_id),
                "model": json.dumps(self.spec.model_dump(mode="json")["model"]),  # redacted
            }
        )

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
        if self._derived is not None:
            self._derived.add(prepared.files)
        if prepared.depth is not None:
            self._depth_rows.append(prepared.depth)
            if sum(t.nbytes for t in self._depth_rows) >= DEPTH_ROW_GROUP_BYTES:
                self._flush_depth()

    def _metadata(self, table: str) -> dict[bytes, bytes]:
        return table_metadata(self.spec, table, self.sequence_id, self.engine)

    def _flush_depth(self) -> None:
        """Write the buffered depth rows as one row group."""
        if not self._depth_rows:
            return
        if self._depth_writer is None:
            schema = file_schema(DEPTH_SCHEMA, self._metadata(DEPTH))
            self._depth_writer = pq.ParquetWriter(self._depth_path, schema, **DEPTH_WRITE_OPTIONS)
        rows = pa.concat_tables(self._depth_rows)
        self._depth_rows = []
        rows = rows.replace_schema_metadata(self._depth_writer.schema.metadata)
        self._depth_writer.write_table(rows, row_group_size=rows.num_rows)

    def finish(self, store: Store, layout: RunLayout, attempt_id: str) -> StagedOutputs:
        """Write all staged files; returns where they are."""
        files: dict[str, str] = {}
        sid = self.sequence_id
        num_points = 0
        if self._points is not None:
            files[POINTS] = layout.staged(sid, attempt_id, POINTS)
            with store.open(files[POINTS], "wb") as f:
                out = self._derived.keep_points(store, files[POINTS], f) if self._derived is not None else f
                num_points = self._points.write(out, comment=f"zipmap-pipeline sequence {sid}")
            if self._points.kept_per_frame is not None:  # a sequence-wide percentile: known only now
                for row, kept in zip(self._rows, self._points.kept_per_frame):
                    row["num_points"] = kept
        files[FRAMES] = layout.staged(sid, attempt_id, FRAMES)
        buf = io.BytesIO()
        schema = file_schema(FRAMES_SCHEMA, self._metadata(FRAMES))
        pq.write_table(pa.Table.from_pylist(self._rows, schema=schema), buf)
        store.write_bytes(files[FRAMES], buf.getvalue())
        if self._depth_path is not None:
            self._flush_depth()
            if self._depth_writer is not None:
                self._depth_writer.close()
                self._depth_writer = None
                files[DEPTH] = layout.staged(sid, attempt_id, DEPTH)
                store.upload(self._depth_path, files[DEPTH])
        if self.spec.scene_state.enabled:
            if self._state is None:
                raise RuntimeError(f"the engine handed over no scene state for {sid}")
            files[STATE] = layout.staged(sid, attempt_id, STATE)
            self._state.save(
                files[STATE], dtype=self.spec.scene_state.dtype, storage_options=store.storage.for_uri(files[STATE])
            )
        if self._derived is not None:
            by_frame = not self.spec.point_cloud.voxel_size
            files.update(self._derived.finish(store, layout, attempt_id, self._rows, by_frame, has_depth=True))
        return StagedOutputs(files=files, num_frames=len(self._rows), num_points=num_points)

    def close(self) -> None:
        """Release spool files (safe to call more than once)."""
        if self._derived is not None:
            self._derived.close()
        if self._points is not None:
            self._points.close()
        if self._depth_writer is not None:
            self._depth_writer.close()
            self._depth_writer = None
        self._depth_rows = []
        if self._depth_path and os.path.exists(self._depth_path):
            os.unlink(self._depth_path)
