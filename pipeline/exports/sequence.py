"""One sequence as the export formats and the report see it: its cameras, its frames' pixels, and
samples of its point cloud with the frame (and pixel) each point was seen in.

The same object is built from a sequence being written (in the model actor) and from a finished
run (`pipeline.exports.run`), so both paths give identical files.

Pixel conventions: our intrinsics put pixel centres on integer coordinates (pixel (0, 0) is the
point (0, 0)); COLMAP and nerfstudio put pixel corners there (pixel (0, 0) is centred on
(0.5, 0.5)), so their principal point is ours + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

SAMPLE_SEED = 0  # point samples are deterministic: the same cloud gives the same sample


@dataclass(frozen=True)
class FrameData:
    """What a format may write per frame (prepared in the frame-writer processes during a run)."""

    index: int
    image: np.ndarray | None  # [H, W, 3] uint8, the model input
    depth: np.ndarray | None  # [H, W] float32


@dataclass(frozen=True)
class Camera:
    """One frame's camera as stored in the frames table (OpenCV axes, world = first camera)."""

    index: int
    extrinsic: np.ndarray  # [3, 4] world-to-camera
    intrinsic: np.ndarray  # [3, 3] model-input pixels, pixel centres on integers
    width: int
    height: int
    source_uri: str
    source_width: int
    source_height: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Camera:
        return cls(
            index=int(row["frame_index"]),
            extrinsic=np.asarray(row["extrinsic"], np.float64).reshape(3, 4),
            intrinsic=np.asarray(row["intrinsic"], np.float64).reshape(3, 3),
            width=int(row["width"]),
            height=int(row["height"]),
            source_uri=str(row["source_uri"]),
            source_width=int(row["source_width"]),
            source_height=int(row["source_height"]),
        )

    @property
    def rotation(self) -> np.ndarray:
        return self.extrinsic[:, :3]

    @property
    def translation(self) -> np.ndarray:
        return self.extrinsic[:, 3]

    @property
    def centre(self) -> np.ndarray:
        """The camera's position in the world: -R^T t."""
        return -self.rotation.T @ self.translation

    def camera_to_world(self) -> np.ndarray:
        """[4, 4] camera-to-world, OpenCV camera axes (x right, y down, z forward)."""
        out = np.eye(4)
        out[:3, :3] = self.rotation.T
        out[:3, 3] = self.centre
        return out

    def pinhole(self, at_source: bool = False, size: int = 518, mode: str = "crop") -> Pinhole:
        """fx, fy, cx, cy with pixel corners on integers, at the model-input resolution or (with
        the run's preprocessing `size` and `mode`) at the original frame's resolution."""
        K = self.intrinsic
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5
        if not at_source:
            return Pinhole(fx, fy, cx, cy, self.width, self.height)
        m = self._source_map(size, mode)
        cx, cy = self.to_source(np.array([[cx, cy]]), size, mode)[0]
        return Pinhole(fx * m.scale_x, fy * m.scale_y, cx, cy, self.source_width, self.source_height)

    def to_source(self, uv: np.ndarray, size: int, mode: str) -> np.ndarray:
        """[n, 2] model-input pixel coordinates (corners on integers) -> the original frame's."""
        m = self._source_map(size, mode)
        return np.stack([(uv[:, 0] + m.offset_x) * m.scale_x, (uv[:, 1] + m.offset_y) * m.scale_y], axis=1)

    def _source_map(self, size: int, mode: str):
        from zipmap_core.images import input_to_source  # torch: not in the frame-writer processes

        return input_to_source(self.source_width, self.source_height, size=size, mode=mode)


class Pinhole(NamedTuple):
    fx: float
    fy: float
    cx: float  # pixel corners on integers (COLMAP, nerfstudio)
    cy: float
    width: int
    height: int


class PointSample(NamedTuple):
    vertices: np.ndarray  # PLY vertices (x y z red green blue confidence), in cloud order
    frames: np.ndarray | None  # [n] position in `ExportSequence.cameras` of the frame each came from


@dataclass
class ExportSequence:
    """Everything the formats need of one sequence."""

    sequence_id: str
    rows: list[dict[str, Any]]  # its frames-table rows, in frame order
    vertices: np.ndarray  # the whole point cloud (PLY vertices; an array or a read-only memmap)
    # Without voxels the cloud lists each frame's points in frame order, so the frame of every point
    # follows from the frames' `num_points`; voxel-averaged points belong to no single frame.
    points_by_frame: bool
    preprocess_size: int = 518
    preprocess_mode: str = "crop"
    cameras: list[Camera] = field(init=False)
    _samples: dict[int, PointSample] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cameras = [Camera.from_row(r) for r in self.rows]

    def sample(self, count: int) -> PointSample:
        """Up to `count` points drawn without replacement (deterministic), in cloud order."""
        n = len(self.vertices)
        count = min(count, n)
        if count not in self._samples:
            if count == n:
                index = np.arange(n)
            else:
                index = np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, size=count, replace=False))
            frames = None
            counts = [int(r["num_points"]) for r in self.rows]
            if self.points_by_frame and sum(counts) == n:
                frames = np.searchsorted(np.cumsum(counts), index, side="right")
            self._samples[count] = PointSample(np.asarray(self.vertices[index]), frames)
        return self._samples[count]

    def observations(self, sample: PointSample) -> tuple[np.ndarray, np.ndarray]:
        """(point positions in `sample`, [n, 2] pixel centres, corners on integers) of the points
        of known frame that land in their frame's image: the pixel each point was unprojected from."""
        if sample.frames is None or not len(sample.vertices):
            return np.empty(0, np.int64), np.empty((0, 2))
        xyz = xyz_of(sample.vertices)
        uv = np.full((len(xyz), 2), np.nan)
        for pos in np.unique(sample.frames):
            cam = self.cameras[pos]
            rows = np.flatnonzero(sample.frames == pos)
            local = xyz[rows] @ cam.rotation.T + cam.translation
            z = local[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                u = cam.intrinsic[0, 0] * local[:, 0] / z + cam.intrinsic[0, 2]
                v = cam.intrinsic[1, 1] * local[:, 1] / z + cam.intrinsic[1, 2]
            col, row = np.rint(u), np.rint(v)
            inside = (z > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
            uv[rows[inside]] = np.stack([col[inside], row[inside]], axis=1) + 0.5
        keep = np.flatnonzero(np.isfinite(uv[:, 0]))
        return keep, uv[keep]


def xyz_of(vertices: np.ndarray) -> np.ndarray:
    """[n, 3] float64 positions of PLY vertices."""
    return np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1).astype(np.float64)


def rgb_of(vertices: np.ndarray) -> np.ndarray:
    """[n, 3] uint8 colours of PLY vertices."""
    return np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=1).astype(np.uint8)


def frame_file_name(camera_or_index: Camera | int, extension: str) -> str:
    """`frame_00012.jpg`: one name scheme for every format, sortable (nerfstudio sorts by name)."""
    index = camera_or_index.index if isinstance(camera_or_index, Camera) else camera_or_index
    return f"frame_{index:05d}.{extension}"
