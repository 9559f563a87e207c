"""The run's Parquet tables: schemas with units and conventions, and how their files are written.

`frames/` and `depth/` are hive-partitioned datasets (`<table>/sequence_id=<id>/part-0.parquet`).
Following the hive convention, the partition key lives in the path only, not inside the files:
with the key in both, pandas and `pyarrow.parquet.read_table` refused the folder (a string in
the files, a dictionary inferred from the path). Every file's schema metadata (key `zipmap`)
still names its sequence, with the model, checkpoint and resolved engine that produced it, and
the camera and unit conventions; every column carries its unit and meaning.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from .spec import JobSpec

PARTITION_KEY = "sequence_id"
# reading a table folder: the key from the path, always a string (never inferred as an integer)
PARTITIONING = ds.partitioning(pa.schema([(PARTITION_KEY, pa.string())]), flavor="hive")
METADATA_KEY = b"zipmap"
FORMAT_VERSION = 2  # 1: sequence_id inside the files too, no metadata, depth in snappy row groups of 1 frame

CONVENTIONS = {
    "extrinsic": (
        "world-to-camera [R | t] (x_camera = R x_world + t), 3x4 row-major; OpenCV camera axes "
        "(x right, y down, z forward); world = the camera of frame 0, whose extrinsic is [I | 0]"
    ),
    "intrinsic": (
        "3x3 row-major, in pixels of the model input (the row's width x height, the depth map's "
        "size); pixel (u, v) = (column, row) has its centre at image coordinates (u, v); the "
        "principal point is (width / 2, height / 2), as the ZipMap pose encoding defines it"
    ),
    "units": (
        "depth, translations and world points are in the model's scene units: one unknown global "
        "scale per sequence, not metres"
    ),
    "depth": "z-depth along the optical axis (not the distance along the ray), scene units",
    "confidence": "depth confidence 1 + exp(x) >= 1 from the depth head; higher is more reliable",
}


def _field(name: str, type_: pa.DataType, description: str, unit: str | None = None) -> pa.Field:
    meta = {"description": description}
    if unit:
        meta["unit"] = unit
    return pa.field(name, type_, metadata=meta)


_SEQUENCE = _field(PARTITION_KEY, pa.string(), "the sequence (hive partition key: in the path, not the files)")
_DEPTH_STAT = "over valid depth (finite and > 0); null if none"
_MAP = "height x width values, row-major"

# The tables as read (pyarrow.dataset with PARTITIONING, pandas, pipeline.read_outputs).
FRAMES_SCHEMA = pa.schema(
    [
        _SEQUENCE,
        _field("frame_index", pa.int32(), "0-based position in the sequence, after frame selection"),
        _field("source_uri", pa.string(), "the image, or <video uri>#frame=<index in the video>"),
        _field("width", pa.int32(), "width of the model input = depth map; the intrinsics refer to it", "pixels"),
        _field("height", pa.int32(), "height of the model input = depth map", "pixels"),
        _field("source_width", pa.int32(), "width of the original image", "pixels"),
        _field("source_height", pa.int32(), "height of the original image", "pixels"),
        _field("extrinsic", pa.list_(pa.float32(), 12), CONVENTIONS["extrinsic"], "scene units (translation)"),
        _field("intrinsic", pa.list_(pa.float32(), 9), CONVENTIONS["intrinsic"], "pixels"),
        _field("depth_min", pa.float32(), _DEPTH_STAT, "scene units"),
        _field("depth_max", pa.float32(), _DEPTH_STAT, "scene units"),
        _field("depth_mean", pa.float32(), _DEPTH_STAT, "scene units"),
        _field("depth_median", pa.float32(), _DEPTH_STAT, "scene units"),
        _field("valid_depth_fraction", pa.float32(), "share of pixels with valid depth", "fraction"),
        _field("num_points", pa.int64(), "pixels of this frame in the point cloud (before voxel averaging)"),
        _field("camera_conf", pa.float32(), "mean depth confidence of the frame"),
    ]
)

DEPTH_SCHEMA = pa.schema(
    [
        _SEQUENCE,
        _field("frame_index", pa.int32(), "0-based position in the sequence, after frame selection"),
        _field("height", pa.int32(), "rows of the maps", "pixels"),
        _field("width", pa.int32(), "columns of the maps", "pixels"),
        _field("depth", pa.list_(pa.float32()), f"{_MAP}; {CONVENTIONS['depth']}", "scene units"),
        _field("depth_conf", pa.list_(pa.float32()), f"{_MAP}; {CONVENTIONS['confidence']}"),
    ]
)

# Depth maps: float columns as byte-stream-split + zstd, no dictionary (the dictionary of
# a float map only grows the file): 0.49-0.52 of the raw float32 size on the demo model's maps at
# 224x168 and 518x392, where snappy with one row group per frame took 1.26-1.35 times the raw size.
DEPTH_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": False,
    "use_byte_stream_split": ["depth.list.element", "depth_conf.list.element"],
}
DEPTH_ROW_GROUP_BYTES = 64 * 2**20  # frames buffered per row group (about 40 at 518x392)


def file_schema(schema: pa.Schema, metadata: dict[bytes, bytes] | None = None) -> pa.Schema:
    """What a partition file holds: the table's columns but the partition key, with `metadata`."""
    fields = [f for f in schema if f.name != PARTITION_KEY]
    return pa.schema(fields, metadata=metadata)


def table_metadata(spec: JobSpec, table: str, sequence_id: str, engine: dict[str, Any] | None) -> dict[bytes, bytes]:
    """The schema metadata of one file: what produced it and how to read it (secrets redacted)."""
    data = spec.model_dump(mode="json")
    record = {
        "table": table,
        "format_version": FORMAT_VERSION,
        "sequence_id": sequence_id,
        "run_id": spec.run_id,
        "producer": f"zipmap-pipeline {_version()}",
        "model": data["model"],
        "engine": engine,
        "preprocess": data["preprocess"],
        "point_cloud": data["point_cloud"],
        "conventions": CONVENTIONS,
    }
    return {METADATA_KEY: json.dumps(record, sort_keys=True).encode()}


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The `zipmap` record of a file's schema (empty for files written before it existed)."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def _version() -> str:
    try:
        return version("zipmap-pipeline")
    except PackageNotFoundError:
        return "unknown"
