"""Point clouds: confidence filtering, voxel averaging and binary little-endian PLY files.

Points are never all held in memory: without voxels they stream frame by frame into a spool
file, and with voxels only one running sum per occupied voxel is kept. The PLY header (which
must state the vertex count up front) is written once the count is known.

A confidence percentile (the released demo keeps points at or above the 50th percentile of the
whole sequence's confidence) is known only after the last frame: the candidates then stay in the
spool, their confidences' exact percentile is found in bounded memory (`ConfidencePercentile`),
and the kept ones are copied (or voxel-averaged) from the spool into the PLY.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, BinaryIO, NamedTuple

import numpy as np

# x y z float32, red green blue uint8, confidence float32, packed (19 bytes per vertex).
PLY_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("confidence", "<f4")]
)
_PLY_TYPES = {np.dtype("<f4"): "float", np.dtype("u1"): "uchar"}
# per-voxel rows buffered before a merge into the grid: as many as the grid holds, within these
_MIN_PENDING, _MAX_PENDING = 4_000_000, 16_000_000  # (at 72 bytes a row: 290 MB and 1.2 GB)
_SPOOL_BLOCK = 1 << 22  # vertices read back from the spool at a time (80 MB)
# The released demo drops these whatever the thresholds (visual_util.py, predictions_to_glb).
MIN_CONFIDENCE = 1e-5
_AXIS_BITS = 21  # voxel indices per axis that pack into one int64 key (3 x 21 bits)
_PACK_OFFSET = 1 << (_AXIS_BITS - 1)  # packed: indices in (-2**20, 2**20), about 10 km at 1 cm voxels


def frame_points(
    depth: np.ndarray, depth_conf: np.ndarray, world_points: np.ndarray, image: np.ndarray, threshold: float
) -> np.ndarray:
    """The kept points of one frame as PLY vertices, in row-major pixel order.

    A pixel becomes a point when its depth is finite and positive, its confidence finite, above
    `MIN_CONFIDENCE` and at least `threshold`, and its world point finite. Runs once per frame on
    the writer's critical path, so it selects first (cheap 1-D masks over depth and confidence)
    and packs only the kept pixels, byte columns side by side.
    """
    # NaN compares false, so this also drops non-finite depth and confidence
    conf_ok = (depth_conf >= threshold) & (depth_conf > MIN_CONFIDENCE) & (depth_conf < np.inf)
    mask = (depth > 0) & (depth < np.inf) & conf_ok
    keep = np.flatnonzero(mask.reshape(-1))
    xyz = np.asarray(world_points, np.float32).reshape(-1, 3)[keep]
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        keep, xyz = keep[finite], xyz[finite]
    n = len(keep)
    conf = np.asarray(depth_conf, np.float32).reshape(-1)[keep]
    rgb = np.asarray(image, np.uint8).reshape(-1, 3)[keep]
    packed = np.concatenate([xyz.view(np.uint8), rgb, conf.view(np.uint8).reshape(n, 4)], axis=1)
    return packed.view(PLY_DTYPE).reshape(n)


class VoxelSums(NamedTuple):
    """Per-voxel sums of some points, one row per voxel, sorted by voxel.

    `keys` are packed int64 voxel indices (`_pack`), or [n, 3] index rows in `far` sums (voxels
    past the packing range, for which no one-integer order exists)."""

    keys: np.ndarray
    sums: np.ndarray  # [7, n] float64: x y z red green blue confidence (a row each: 1-D reductions)
    counts: np.ndarray  # [n] int64

    @staticmethod
    def empty(rows: bool) -> VoxelSums:
        return VoxelSums(np.empty((0, 3) if rows else 0, np.int64), np.empty((7, 0)), np.empty(0, np.int64))


def voxel_sums(points: np.ndarray, voxel_size: float) -> tuple[VoxelSums, VoxelSums]:
    """(near, far) per-voxel sums of PLY vertices: near voxels with packed keys, far ones by rows.

    Runs per frame in the frame-writer processes, so the sequence's grid only merges sums."""
    values = np.stack([points[name] for name in PLY_DTYPE.names]).astype(np.float64)  # x y z first
    # [n, 3] voxel indices, clipped so that absurdly distant (but finite) points cannot overflow
    index = np.clip(np.floor(values[:3].T / voxel_size), -(2.0**62), 2.0**62).astype(np.int64)
    near = (np.abs(index) < _PACK_OFFSET).all(axis=1)
    counts = np.ones(len(points), np.int64)
    if near.all():
        return _reduce(_pack(index), values, counts), VoxelSums.empty(rows=True)
    far = ~near
    return (
        _reduce(_pack(index[near]), values[:, near], counts[near]),
        _reduce(index[far], values[:, far], counts[far]),
    )


def _pack(index: np.ndarray) -> np.ndarray:
    """[n, 3] voxel indices in (-2**20, 2**20) -> one int64 each, ordered as the rows are."""
    shifted = index + _PACK_OFFSET
    return (shifted[:, 0] << (2 * _AXIS_BITS)) | (shifted[:, 1] << _AXIS_BITS) | shifted[:, 2]


def _unpack(keys: np.ndarray) -> np.ndarray:
    mask = (1 << _AXIS_BITS) - 1
    return np.stack([keys >> (2 * _AXIS_BITS), (keys >> _AXIS_BITS) & mask, keys & mask], axis=1) - _PACK_OFFSET


def _reduce(keys: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> VoxelSums:
    """Sum the rows of equal keys; the result is sorted by key."""
    if len(keys) == 0:
        return VoxelSums(keys, sums, counts)
    # the inputs are mostly concatenated sorted runs, which the stable sort (timsort) merges
    order = np.argsort(keys, kind="stable") if keys.ndim == 1 else np.lexsort(keys.T[::-1])
    keys = keys[order]
    differs = keys[1:] != keys[:-1]
    starts = np.flatnonzero(np.concatenate([[True], differs if keys.ndim == 1 else differs.any(axis=1)]))
    sums = np.stack([np.add.reduceat(row[order], starts) for row in sums])
    return VoxelSums(keys[starts], sums, np.add.reduceat(counts[order], starts))


def _concatenate(parts: list[VoxelSums]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.concatenate([p.keys for p in parts]),
        np.concatenate([p.sums for p in parts], axis=1),
        np.concatenate([p.counts for p in parts]),
    )


class VoxelGrid:
    """Running per-voxel averages of position, colour and confidence."""

    def __init__(self, voxel_size: float):
        if voxel_size <= 0:
            raise ValueError("voxel_size must be > 0")
        self.voxel_size = float(voxel_size)
        self._near, self._far = VoxelSums.empty(rows=False), VoxelSums.empty(rows=True)
        self._pending: list[tuple[VoxelSums, VoxelSums]] = []
        self._pending_n = 0

    def add(self, points: np.ndarray) -> None:
        if len(points):
            self.add_sums(voxel_sums(points, self.voxel_size))

    def add_sums(self, sums: tuple[VoxelSums, VoxelSums]) -> None:
        """Add (near, far) sums from `voxel_sums`. Merging waits until the pending rows are as many
        as the grid's (within _MIN_PENDING and _MAX_PENDING): re-sorting the grid then costs no more
        than sorting the new rows, and memory stays bounded for very large grids."""
        self._pending.append(sums)
        self._pending_n += len(sums[0].keys) + len(sums[1].keys)
        grid_rows = len(self._near.keys) + len(self._far.keys)
        if self._pending_n >= min(max(_MIN_PENDING, grid_rows), _MAX_PENDING):
            self._consolidate()

    def result(self) -> np.ndarray:
        """Averaged vertices, one per occupied voxel, sorted by voxel index."""
        self._consolidate()
        keys = np.concatenate([_unpack(self._near.keys), self._far.keys])
        sums = np.concatenate([self._near.sums, self._far.sums], axis=1)
        counts = np.concatenate([self._near.counts, self._far.counts])
        if len(self._far.keys):
            order = np.lexsort(keys.T[::-1])
            sums, counts = sums[:, order], counts[order]
        mean = (sums / counts).T
        out = np.empty(len(mean), dtype=PLY_DTYPE)
        out["x"], out["y"], out["z"] = mean[:, 0], mean[:, 1], mean[:, 2]
        rgb = np.clip(np.rint(mean[:, 3:6]), 0, 255).astype(np.uint8)
        out["red"], out["green"], out["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
        out["confidence"] = mean[:, 6]
        return out

    def _consolidate(self) -> None:
        if not self._pending:
            return
        merged = []
        for state, parts in ((self._near, [p[0] for p in self._pending]), (self._far, [p[1] for p in self._pending])):
            parts = [state] + [p for p in parts if len(p.keys)]
            merged.append(parts[0] if len(parts) == 1 else _reduce(*_concatenate(parts)))
        self._near, self._far = merged
        self._pending, self._pending_n = [], 0


class ConfidencePercentile:
    """numpy's `percentile(values, q)` (linear interpolation) of positive float32 values that
    arrive in batches, exact, in bounded memory.

    Positive floats order as their bit patterns do. `add` counts the high 16 bits of every value;
    `threshold` finds the bins that hold the two order statistics the percentile interpolates
    between, counts the low 16 bits of those bins' values in one more pass over the batches
    (`read_again`), and so knows both values bit for bit."""

    def __init__(self, q: float):
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        self.q = q
        self.count = 0
        self._high = np.zeros(1 << 16, np.int64)

    @staticmethod
    def _bits(values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values, np.float32).view(np.uint32)

    def add(self, values: np.ndarray) -> None:
        self._high += np.bincount(self._bits(values) >> 16, minlength=1 << 16)
        self.count += len(values)

    def threshold(self, read_again: Callable[[], Iterable[np.ndarray]]) -> float | None:
        """The percentile of everything added (None when nothing was)."""
        if self.count == 0:
            return None
        position = self.q / 100 * (self.count - 1)
        ranks = (int(np.floor(position)), min(int(np.floor(position)) + 1, self.count - 1))
        ends = np.cumsum(self._high)
        bins = [int(np.searchsorted(ends, r, side="right")) for r in ranks]
        low = {b: np.zeros(1 << 16, np.int64) for b in set(bins)}
        for values in read_again():
            bits = self._bits(values)
            high = bits >> 16
            for b, counts in low.items():
                counts += np.bincount(bits[high == b] & 0xFFFF, minlength=1 << 16)
        order_stats = []
        for r, b in zip(ranks, bins):
            within = r - (int(ends[b - 1]) if b else 0)
            lo = int(np.searchsorted(np.cumsum(low[b]), within, side="right"))
            order_stats.append(np.uint32((b << 16) | lo).view(np.float32))
        # numpy's own interpolation between the two, so that the threshold is the one it computes
        return float(np.percentile(np.array(order_stats, np.float32), 100 * (position - ranks[0])))


class PointCloudBuilder:
    """Collects the kept points of a sequence frame by frame and writes them as one PLY.

    With `percentile`, points are kept only at or above that percentile of the confidences of all
    the points added (as `np.percentile` computes it): they are spooled until `write`, which then
    reports how many of each frame's points were kept in `kept_per_frame`."""

    def __init__(self, voxel_size: float | None = None, percentile: float | None = None):
        self._percentile = ConfidencePercentile(percentile) if percentile else None
        self._voxel_size = voxel_size
        self._grid = VoxelGrid(voxel_size) if voxel_size and not self._percentile else None
        self._spool: IO[bytes] | None = None if self._grid else tempfile.TemporaryFile()
        self._count = 0
        self._per_frame: list[int] = []
        self.kept_per_frame: list[int] | None = None  # after write(), with a percentile

    def add_voxel_sums(self, sums: tuple[VoxelSums, VoxelSums]) -> None:
        """Add one frame's per-voxel sums (from `voxel_sums`, computed where the frame was prepared)."""
        if self._grid is None:
            raise ValueError("per-voxel sums need a builder with a voxel size")
        self._grid.add_sums(sums)

    def add_points(self, points: np.ndarray) -> int:
        """Add one frame's vertices (from `frame_points`); returns how many."""
        if self._grid is not None:
            self._grid.add(points)
        else:
            assert self._spool is not None
            self._spool.write(np.ascontiguousarray(points).view(np.uint8).data)
            self._count += len(points)
            self._per_frame.append(len(points))
            if self._percentile is not None:
                self._percentile.add(points["confidence"])
        return len(points)

    def write(self, out: BinaryIO, comment: str = "") -> int:
        """Write the PLY to a binary file object; returns the number of vertices."""
        if self._percentile is not None:
            return self._write_percentile(out, comment)
        if self._grid is not None:
            return _write_vertices(out, self._grid.result(), comment)
        assert self._spool is not None
        out.write(ply_header(self._count, comment))
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, out, length=1 << 22)
        return self._count

    def _spooled(self, block: int = _SPOOL_BLOCK) -> Iterator[np.ndarray]:
        assert self._spool is not None
        self._spool.seek(0)
        while data := self._spool.read(block * PLY_DTYPE.itemsize):
            yield np.frombuffer(data, PLY_DTYPE)

    def _write_percentile(self, out: BinaryIO, comment: str) -> int:
        threshold = self._percentile.threshold(lambda: (v["confidence"] for v in self._spooled()))
        keep = (lambda v: v["confidence"] >= threshold) if threshold is not None else (lambda v: v["confidence"] > 0)
        # kept points per frame: the spool holds the frames one after another
        ends = np.cumsum(self._per_frame)
        kept_before = np.zeros(len(ends), np.int64)
        seen = kept = 0
        for vertices in self._spooled():
            mask = keep(vertices)
            cum = np.concatenate([[0], np.cumsum(mask)])
            inside = (ends > seen) & (ends <= seen + len(vertices))
            kept_before[inside] = kept + cum[ends[inside] - seen]
            seen, kept = seen + len(vertices), kept + int(cum[-1])
        self.kept_per_frame = np.diff(np.concatenate([[0], kept_before])).tolist()
        if self._voxel_size:
            grid = VoxelGrid(self._voxel_size)
            for vertices in self._spooled():
                grid.add(vertices[keep(vertices)])
            return _write_vertices(out, grid.result(), comment)
        out.write(ply_header(kept, comment))
        for vertices in self._spooled():
            out.write(vertices[keep(vertices)].tobytes())
        return kept

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None


def _write_vertices(out: BinaryIO, vertices: np.ndarray, comment: str) -> int:
    out.write(ply_header(len(vertices), comment))
    out.write(vertices.tobytes())
    return len(vertices)


def ply_header(num_vertices: int, comment: str = "") -> bytes:
    lines = ["ply", "format binary_little_endian 1.0"]
    if comment:
        lines.append(f"comment {comment}")
    lines.append(f"element vertex {num_vertices}")
    for name in PLY_DTYPE.names:
        lines.append(f"property {_PLY_TYPES[PLY_DTYPE.fields[name][0]]} {name}")
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def read_ply(data: bytes) -> np.ndarray:
    """Vertices of a PLY written by this module (a structured array with PLY_DTYPE fields)."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    if header[:2] != ["ply", "format binary_little_endian 1.0"]:
        raise ValueError("not a binary little-endian PLY file")
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    return np.frombuffer(data, dtype=PLY_DTYPE, count=count, offset=end)
