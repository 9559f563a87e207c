"""Outputs derived from a sequence's reconstruction: the export formats and the report's previews.

Each is a writer with an output kind (the folder `<run>/<kind>/<id>/` it fills), files it may
write per frame (images, depth PNGs: made in the frame-writer processes during a run) and files it
writes once the sequence is complete (models, transforms.json, previews). `DerivedOutputs`
collects them for one attempt and stages them next to the sequence's other outputs, so the
coordinator commits everything together.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any, BinaryIO, Protocol

import numpy as np

from ..layout import RunLayout
from ..overlap import scratch_prefix
from ..pointcloud import PLY_DTYPE
from ..report.options import ReportSpec
from ..storage import Store
from .options import ColmapExport, NerfstudioExport
from .sequence import ExportSequence, FrameData


class DerivedWriter(Protocol):
    kind: str

    def frame_files(self, frame: FrameData) -> dict[str, bytes]: ...

    def write(self, sequence: ExportSequence, folder: str, *, local_sources: bool, has_depth: bool) -> None: ...


def derived_writers(exports: Sequence[Any], report: ReportSpec | None = None) -> tuple[DerivedWriter, ...]:
    """The writers of a spec's `exports` (and the previews, when the report is enabled)."""
    from ..report.previews import PreviewWriter
    from .colmap import ColmapWriter
    from .nerfstudio import NerfstudioWriter

    writers: list[DerivedWriter] = []
    for options in exports:
        if isinstance(options, ColmapExport):
            writers.append(ColmapWriter(options))
        elif isinstance(options, NerfstudioExport):
            writers.append(NerfstudioWriter(options))
        else:
            raise TypeError(f"not an export format: {options!r}")
    if report is not None and report.enabled:
        writers.append(PreviewWriter(report))
    return tuple(writers)


def derived_frame_files(writers: Sequence[DerivedWriter], frame: FrameData) -> dict[str, dict[str, bytes]]:
    """kind -> {relative path: bytes} of one frame (the per-pixel encoding work)."""
    return {w.kind: files for w in writers if (files := w.frame_files(frame))}


def sources_are_local(rows: Sequence[dict[str, Any]]) -> bool:
    return all("://" not in r["source_uri"] or r["source_uri"].startswith("file://") for r in rows)


class DerivedOutputs:
    """One attempt's derived files: per-frame files spooled to a local folder as they come, the
    rest written at the end, then all of it staged under the attempt's staging folder."""

    def __init__(self, writers: Sequence[DerivedWriter], sequence_id: str, size: int, mode: str):
        self.writers = tuple(writers)
        self.sequence_id = sequence_id
        self._size, self._mode = size, mode
        self._dir: str | None = tempfile.mkdtemp(prefix=f"{scratch_prefix()}derived-")
        self._ply: str | None = None  # the sequence's PLY as written, on the local disk
        self._ply_copy: BinaryIO | None = None

    def add(self, files: dict[str, dict[str, bytes]] | None) -> None:
        for kind, named in (files or {}).items():
            for name, data in named.items():
                path = os.path.join(self._dir, *kind.split("/"), *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)

    def keep_points(self, store: Store, staged_uri: str, out: BinaryIO) -> BinaryIO:
        """Where to write the sequence's PLY so that its points can be read back here: the staged
        file itself on a local disk, else a copy made on the way (no download afterwards)."""
        if store.local:
            self._ply = store.path(staged_uri)
            return out
        self._ply = os.path.join(self._dir, "points.ply")
        self._ply_copy = open(self._ply, "wb")
        return _Tee(out, self._ply_copy)

    def finish(
        self,
        store: Store,
        layout: RunLayout,
        attempt_id: str,
        rows: list[dict[str, Any]],
        points_by_frame: bool,
        has_depth: bool,
        vertices: np.ndarray | None = None,
    ) -> dict[str, str]:
        """Write the sequence-level files and stage everything; returns kind -> staged URI. The
        points are `vertices`, or those of the PLY written through `keep_points`."""
        if self._ply_copy is not None:
            self._ply_copy.close()
        if vertices is None:
            vertices = map_ply(self._ply) if self._ply is not None else np.empty(0, PLY_DTYPE)
        sequence = ExportSequence(self.sequence_id, rows, vertices, points_by_frame, self._size, self._mode)
        local_sources = store.local and sources_are_local(rows)
        staged = {}
        for writer in self.writers:
            folder = os.path.join(self._dir, *writer.kind.split("/"))
            os.makedirs(folder, exist_ok=True)
            writer.write(sequence, folder, local_sources=local_sources, has_depth=has_depth)
            staged[writer.kind] = layout.staged(self.sequence_id, attempt_id, writer.kind)
            store.put_tree(folder, staged[writer.kind])
        return staged

    def close(self) -> None:
        if self._ply_copy is not None:
            self._ply_copy.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class _Tee:
    """Writes go to the store's file and to a local copy."""

    def __init__(self, out: BinaryIO, copy: BinaryIO):
        self._out, self._copy = out, copy

    def write(self, data) -> int:
        self._copy.write(data)
        return self._out.write(data)


def map_ply(path: str) -> np.ndarray:
    """The vertices of a PLY of `pipeline.pointcloud` as a read-only memory map (no copy)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    end = head.index(b"end_header\n") + len(b"end_header\n")
    count = next(int(line.split()[2]) for line in head[:end].decode("ascii").splitlines()
                 if line.startswith("element vertex"))
    if count == 0:
        return np.empty(0, PLY_DTYPE)
    return np.memmap(path, dtype=PLY_DTYPE, mode="r", offset=end, shape=(count,))
