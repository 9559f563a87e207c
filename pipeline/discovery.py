"""Finding capture sequences on any fsspec store and giving each a safe, stable id.

A sequence is either a folder of images (frames in natural name order) or one video file. The
id names the sequence's output files and hive partitions, so it is derived only from the
input's relative path (stable across runs), restricted to [A-Za-z0-9._-], and never a path.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from .errors import SpecError
from .spec import JobSpec
from .storage import Store, join

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv"})
MAX_ID_LENGTH = 100


class SequenceSource(BaseModel):
    """One sequence to reconstruct, as found on the input store."""

    model_config = ConfigDict(frozen=True)

    sequence_id: str
    kind: Literal["images", "video"]
    uri: str  # the folder of images, or the video file
    frames: tuple[str, ...] = ()  # image URIs in frame order (empty for videos)

    @property
    def num_frames(self) -> int | None:
        """Known before decoding for image folders; None for videos."""
        return len(self.frames) if self.kind == "images" else None


def discover(spec: JobSpec) -> list[SequenceSource]:
    """All sequences of the spec's input, sorted by id."""
    if spec.input.prefix is not None:
        store = Store(spec.input.prefix, spec.storage)
        found = _scan_prefix(store, spec.input.prefix)
    else:
        assert spec.input.manifest is not None
        store = Store(spec.input.manifest, spec.storage)
        found = _read_manifest(store, spec.input.manifest)
    return sorted(_assign_ids(found), key=lambda s: s.sequence_id)


# --- scanning --------------------------------------------------------------------------------


class _Found(BaseModel):
    rel: str  # path relative to the prefix (or the manifest's id/uri), the basis of the id
    kind: Literal["images", "video"]
    uri: str
    frames: tuple[str, ...] = ()
    explicit_id: bool = False


def _scan_prefix(store: Store, prefix: str) -> list[_Found]:
    root = store.path(prefix).rstrip("/")
    store.fs.invalidate_cache(root)
    if not store.fs.isdir(root):
        raise SpecError(f"input.prefix {prefix} is not a folder (or does not exist)")
    folders: dict[str, list[str]] = {}
    found: list[_Found] = []
    for path in store.fs.find(root, maxdepth=2, withdirs=False):
        rel = path[len(root) :].lstrip("/")
        parent, _, name = rel.rpartition("/")
        ext = _ext(name)
        if not parent and ext in VIDEO_EXTENSIONS:
            found.append(_Found(rel=rel, kind="video", uri=store.uri(path)))
        elif parent and "/" not in parent and ext in IMAGE_EXTENSIONS:
            folders.setdefault(parent, []).append(path)
    for parent, paths in folders.items():
        frames = tuple(store.uri(p) for p in sorted(paths, key=natural_key))
        found.append(_Found(rel=parent, kind="images", uri=store.uri(join(root, parent)), frames=frames))
    return found


def list_images(store: Store, folder_uri: str) -> tuple[str, ...]:
    """Image files directly inside a folder, in natural order."""
    entries = store.ls(folder_uri)
    paths = [e["name"] for e in entries if e.get("type") == "file" and _ext(e["name"]) in IMAGE_EXTENSIONS]
    return tuple(store.uri(p) for p in sorted(paths, key=natural_key))


def _read_manifest(store: Store, manifest_uri: str) -> list[_Found]:
    """A table with a `uri` column (folder or video, absolute or relative to the manifest)."""
    table = _read_table(store, manifest_uri)
    if "uri" not in table.column_names:
        raise SpecError(f"manifest {manifest_uri} has no 'uri' column (columns: {table.column_names})")
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    uris = [str(u) for u in table.column("uri").to_pylist()]
    ids = table.column("sequence_id").to_pylist() if "sequence_id" in table.column_names else [None] * len(uris)
    found, seen = [], set()
    for uri, given in zip(uris, ids):
        full = uri if ("://" in uri or uri.startswith("/")) else join(base, uri)
        if full in seen:
            continue
        seen.add(full)
        kind: Literal["images", "video"] = "video" if _ext(full) in VIDEO_EXTENSIONS else "images"
        frames = list_images(store, full) if kind == "images" else ()
        rel = str(given) if given else uri
        found.append(_Found(rel=rel, kind=kind, uri=full, frames=frames, explicit_id=bool(given)))
    return found


def _read_table(store: Store, uri: str) -> pa.Table:
    try:
        data = store.read_bytes(uri)
    except FileNotFoundError:
        raise SpecError(f"input.manifest {uri} not found") from None
    if _ext(uri) == ".csv":
        return pacsv.read_csv(io.BytesIO(data))
    if _ext(uri) in (".parquet", ".pq"):
        return pq.read_table(io.BytesIO(data))
    raise SpecError(f"input.manifest {uri}: expected a .parquet or .csv file")


# --- ids -------------------------------------------------------------------------------------


def _assign_ids(found: list[_Found]) -> list[SequenceSource]:
    bases = [sanitize_id(f.rel if f.explicit_id or f.kind == "images" else _strip_ext(f.rel)) for f in found]
    counts = Counter(bases)
    out = []
    for f, base in zip(found, bases):
        sid = f"{base}-{short_hash(f.uri)}" if counts[base] > 1 else base
        out.append(SequenceSource(sequence_id=sid, kind=f.kind, uri=f.uri, frames=f.frames))
    return out


def sanitize_id(rel_path: str) -> str:
    """A safe id from a relative path: [A-Za-z0-9._-] only, no '..', no leading dot or dash.

    Ids that would read as integers get a `seq-` prefix, because hive partition discovery
    would otherwise type the `sequence_id` partition as int32 (and "007" would become 7).
    """
    parts = [p for p in rel_path.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    sid = re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(parts))
    sid = re.sub(r"\.{2,}", ".", sid).strip(".").lstrip("-") or "seq"
    if len(sid) > MAX_ID_LENGTH:
        sid = f"{sid[: MAX_ID_LENGTH - 9]}-{short_hash(rel_path)}"
    if re.fullmatch(r"\d+|0[xX][0-9a-fA-F]+", sid):
        sid = f"seq-{sid}"
    return sid


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def natural_key(name: str) -> tuple[list[object], str]:
    """'frame2' before 'frame10'; ties broken by the plain name."""
    base = posixpath.basename(name)
    # re.split with a group alternates text and digits, so types line up position by position.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", base)], base


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _strip_ext(name: str) -> str:
    return posixpath.splitext(name)[0]
