"""Exports (and previews) of a finished run: `zipmap-pipeline export RUN_URI --format colmap`.

Reads each committed sequence through `pipeline.reader` (cameras, point cloud, depth maps when the
run saved them), decodes its frames again with the run's own preprocessing (the model inputs,
bit for bit), writes the same files a run with `exports:` writes, and commits them into the run
(`pipeline.commit.commit_derived`): a sequence's export is replaced whole or not at all.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from ..commit import commit_derived, discard_attempt
from ..errors import SpecError
from ..layout import DEPTH, POINTS, RunLayout
from ..pointcloud import PLY_DTYPE
from ..reader import RunOutputs, read_outputs
from ..redaction import get_logger
from ..spec import JobSpec, StorageSpec
from ..storage import Store
from .options import FORMATS, ExportOptions, unique_formats
from .sequence import FrameData
from .writers import DerivedOutputs, DerivedWriter, derived_frame_files, derived_writers

logger = get_logger(__name__)


def parse_exports(formats: Sequence[Any]) -> list[Any]:
    """Export options from names or mappings (as in a spec's `exports:`); SpecError if invalid."""
    for item in formats:
        name = item if isinstance(item, str) else item.get("format") if isinstance(item, dict) else item.format
        if name not in FORMATS:
            raise SpecError(f"unknown export format {name!r}; choose from {', '.join(FORMATS)}")
    try:
        return unique_formats(TypeAdapter(list[ExportOptions]).validate_python(list(formats)))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][2:])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"invalid export options: {problems}") from None
    except ValueError as exc:
        raise SpecError(str(exc)) from None


@dataclass
class DerivedResult:
    """What an export (or a report's previews) did: committed folders by sequence, and errors."""

    done: dict[str, dict[str, str]] = field(default_factory=dict)  # sequence id -> {kind: folder}
    failed: dict[str, str] = field(default_factory=dict)  # sequence id -> error


def export_run(
    run_uri: str,
    formats: Sequence[Any],
    *,
    sequences: Sequence[str] | None = None,
    storage: StorageSpec | None = None,
    workers: int = 2,
    on_done: Callable[[str], None] | None = None,
) -> DerivedResult:
    """Write `formats` (names like "colmap", or option mappings) for the committed sequences of a
    run (all, or `sequences`) and commit them into the run."""
    return write_derived(run_uri, derived_writers(parse_exports(formats)), sequences, storage, workers, on_done)


def write_derived(
    run_uri: str,
    writers: Sequence[DerivedWriter],
    sequences: Sequence[str] | None = None,
    storage: StorageSpec | None = None,
    workers: int = 2,
    on_done: Callable[[str], None] | None = None,
) -> DerivedResult:
    """Write the derived outputs of `writers` for committed sequences and commit them. A sequence
    that fails is reported (and keeps its earlier outputs); the others go on."""
    from ..api import load_run_spec

    run_uri = run_uri.rstrip("/")
    require_run_folder(Store(run_uri, storage), RunLayout(run_uri))
    spec = load_run_spec(run_uri, storage=storage)
    outputs = read_outputs(run_uri, spec.storage)
    if not outputs.committed:
        raise SpecError(f"{run_uri} has no committed sequences; is it a run folder?")
    chosen = sorted(outputs.committed) if sequences is None else list(dict.fromkeys(sequences))
    unknown = [s for s in chosen if s not in outputs.committed]
    if unknown:
        raise SpecError(f"not committed sequences of {run_uri}: {', '.join(unknown)}")
    result = DerivedResult()

    def one(sequence_id: str) -> None:
        try:
            result.done[sequence_id] = export_sequence(outputs, spec, sequence_id, writers)
        except Exception as exc:  # one bad sequence (a source frame gone) must not stop the others
            logger.error("%s: %s: %s", sequence_id, type(exc).__name__, exc)
            result.failed[sequence_id] = f"{type(exc).__name__}: {exc}"
        if on_done is not None:
            on_done(sequence_id)

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, chosen))
    finally:
        _remove_empty_staging(outputs, chosen)
    return result


def require_run_folder(store: Store, layout: RunLayout) -> None:
    """SpecError unless `layout` is a run's folder (it has the spec every run writes first)."""
    if not store.exists(layout.spec):
        raise SpecError(f"{layout.run_uri} is not a run folder (it has no spec.json)")


def export_sequence(
    outputs: RunOutputs, spec: JobSpec, sequence_id: str, writers: Sequence[DerivedWriter]
) -> dict[str, str]:
    """Derived outputs of one committed sequence, staged and committed; kind -> final folder."""
    layout = RunLayout(outputs.run_uri)
    store = outputs.store
    rows = outputs.sequence_frames(sequence_id)
    record = outputs.committed[sequence_id]
    vertices = outputs.point_cloud(sequence_id) if POINTS in record.output_kinds() else np.empty(0, PLY_DTYPE)
    wants_depth = any(_needs_depth(w) for w in writers)
    depth = outputs.sequence_depth(sequence_id) if wants_depth and DEPTH in record.output_kinds() else None
    attempt_id = f"export-{uuid.uuid4().hex[:12]}"
    derived = DerivedOutputs(writers, sequence_id, spec.preprocess.size, spec.preprocess.mode)
    try:
        if any(_needs_frames(w) for w in writers):
            images = model_inputs(rows, spec) if any(_needs_images(w) for w in writers) else None
            maps = _depth_maps(depth)
            for pos, row in enumerate(rows):
                frame = FrameData(
                    int(row["frame_index"]),
                    None if images is None else images[pos],
                    maps.get(int(row["frame_index"])),
                )
                derived.add(derived_frame_files(writers, frame))
        if depth is None and wants_depth:
            logger.warning("%s: the run saved no depth maps (save_depth: false); exporting without depth", sequence_id)
        by_frame = spec.point_cloud.voxel_size is None
        staged = derived.finish(store, layout, attempt_id, rows, by_frame, depth is not None, vertices=vertices)
        marker = commit_derived(store, layout, sequence_id, staged)
    finally:
        derived.close()
        discard_attempt(store, layout, sequence_id, attempt_id)
    return {kind: layout.final(sequence_id, kind) for kind in marker["outputs"] if kind in staged}


def _remove_empty_staging(outputs: RunOutputs, sequence_ids: Sequence[str]) -> None:
    """Exports stage under `_staging/<id>/export-*`; leave no empty folders behind on a local disk
    (object stores have no folders)."""
    if not outputs.store.local:
        return
    layout = RunLayout(outputs.run_uri)
    for folder in [*(posixpath.dirname(layout.staging(s, "x")) for s in sequence_ids), layout.staging_root]:
        try:
            os.rmdir(outputs.store.path(folder))
        except OSError:  # not empty (a run in progress stages there too), or already gone
            pass


def _needs_frames(writer: DerivedWriter) -> bool:
    return _needs_images(writer) or _needs_depth(writer)


def _needs_images(writer: DerivedWriter) -> bool:
    return getattr(writer.options, "images", None) == "copy"


def _needs_depth(writer: DerivedWriter) -> bool:
    return bool(getattr(writer.options, "depth", False))


def _depth_maps(table) -> dict[int, np.ndarray]:
    """frame index -> [H, W] float32 depth, straight from the Arrow buffers (no Python floats)."""
    if table is None:
        return {}
    flat = table.column("depth").combine_chunks().flatten().to_numpy()
    sizes = table.column("height").to_numpy().astype(np.int64) * table.column("width").to_numpy()
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return {
        int(index): flat[starts[i] : starts[i + 1]].reshape(int(h), int(w))
        for i, (index, h, w) in enumerate(
            zip(table.column("frame_index").to_pylist(), table.column("height").to_pylist(),
                table.column("width").to_pylist())
        )
    }


def model_inputs(rows: list[dict[str, Any]], spec: JobSpec) -> np.ndarray:
    """[S, H, W, 3] uint8: the sequence's frames decoded and preprocessed as the run did."""
    from ..decode import decode_sequence
    from ..discovery import SequenceSource

    # Decode exactly the frames the frames table records: the run's sampling may have come from a
    # manifest row, which the run does not keep.
    uris = [r["source_uri"] for r in rows]
    sequence_id = rows[0]["sequence_id"]
    videos = {u.split("#frame=", 1)[0] for u in uris if "#frame=" in u}
    if videos:
        (video,) = videos
        source = SequenceSource(sequence_id=sequence_id, kind="video", uri=video)
        indices = [int(u.split("#frame=", 1)[1]) for u in uris]
    else:
        source = SequenceSource(
            sequence_id=sequence_id, kind="images", uri=posixpath.dirname(uris[0]), frames=tuple(uris)
        )
        indices = list(range(len(uris)))
    run_spec = spec.model_copy(update={"input": spec.input.model_copy(update={"min_frames": 1})})
    decoded = decode_sequence(source, run_spec, indices=indices)
    if decoded.frame_uris != uris:
        raise RuntimeError(f"{source.uri} no longer gives the frames the run reconstructed")
    pixels = decoded.pixels
    if pixels.dtype != np.uint8:
        pixels = np.rint(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
