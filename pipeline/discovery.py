"""Finding capture sequences on any fsspec store and giving each a safe, stable id.

A sequence is either a folder of images (frames in natural name order) or one video file. The
id names the sequence's output files and hive partitions, so it is derived only from the
input's relative path (stable across runs), restricted to [A-Za-z0-9._-], never a path, and
never shared by two sequences (`assign_ids`).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from .errors import PipelineError, SpecError, storage_error
from .names import check_name
from .redaction import REDACTED, get_logger, redact_uri
from .spec import JobSpec
from .storage import Store, join

logger = get_logger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv"})
MAX_ID_LENGTH = 100
MAX_DISAMBIGUATION_ROUNDS = 4  # more would need a sha256 prefix collision per round


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


def discover(spec: JobSpec, *, known: Mapping[str, str] | None = None) -> list[SequenceSource]:
    """All sequences of the spec's input, sorted by id; no two share an id.

    `known` maps the ids that earlier sessions of the run gave out to their source URIs: those
    sources keep their ids, and no other source takes one of them (see `assign_ids`).
    """
    where = spec.input.prefix or spec.input.manifest
    assert where is not None
    try:
        store = Store(where, spec.storage)
        found = _scan_prefix(store, where) if spec.input.prefix is not None else _read_manifest(store, where)
    except (PipelineError, FileNotFoundError):
        raise
    except Exception as exc:  # the input store failed us: say why in one line
        raise storage_error(exc, where, endpoint_url=spec.storage.endpoint_url, doing="read the input") from exc
    return sorted(assign_ids(found, known or {}), key=lambda s: s.sequence_id)


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
    found: list[_Found] = []
    rows: dict[str, tuple[int, str | None]] = {}  # uri -> (first row, its sequence_id)
    for row, (uri, given) in enumerate(zip(uris, ids), start=1):
        full = uri if ("://" in uri or uri.startswith("/")) else join(base, uri)
        given = str(given) if given not in (None, "") else None
        if full in rows:  # the same sequence listed twice: once, unless the rows disagree on its id
            first, first_id = rows[full]
            if given is not None and first_id is not None and given != first_id:
                raise SpecError(
                    f"manifest {redact_uri(manifest_uri)} rows {first} and {row} list {redact_uri(full)} with two "
                    f"sequence_ids ({first_id!r}, {given!r})"
                )
            logger.warning("manifest rows %d and %d both list %s; it is reconstructed once", first, row, full)
            continue
        rows[full] = (row, given)
        kind: Literal["images", "video"] = "video" if _ext(full) in VIDEO_EXTENSIONS else "images"
        frames = list_images(store, full) if kind == "images" else ()
        rel = given or redact_uri(uri).replace(f"{REDACTED}@", "")  # an id never carries a password
        found.append(_Found(rel=rel, kind=kind, uri=full, frames=frames, explicit_id=given is not None))
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


def assign_ids(found: list[_Found], known: Mapping[str, str]) -> list[SequenceSource]:
    """Ids that are unique by construction, also when case is ignored (a case-insensitive disk
    would merge `Scene` and `scene`), and stable across runs and sessions.

    - A source that an earlier session of the run knew (`known`: id -> URI) keeps its id.
    - An explicit manifest `sequence_id` is the source's id (made safe by `sanitize_id`); two
      explicit ids that clash, or one that the run already gave another URI, are spec errors.
    - Any other source gets the id of its relative path, unless that is taken or shared; then
      `-<first 8 hex of sha256(uri)>` is appended, and again (salted) while the result still
      clashes, e.g. with a folder that is already named like a hashed id.
    """
    public = [redact_uri(f.uri) for f in found]  # as stored in markers, hashed into ids, shown in errors
    by_uri = {uri: sid for sid, uri in known.items()}
    ids: dict[int, str] = {}
    for i, uri in enumerate(public):
        if (sid := by_uri.get(uri)) is not None:
            ids[i] = sid
    held = {sid.casefold(): uri for sid, uri in known.items()}  # every id the run gave out, here or not
    held.update({sid.casefold(): found[i].uri for i, sid in ids.items()})
    for i, f in enumerate(found):
        if i in ids or not f.explicit_id:
            continue
        sid = sanitize_id(f.rel)
        if (holder := held.get(sid.casefold())) is not None:
            raise SpecError(
                f"sequence_id {sid!r} of {redact_uri(f.uri)} clashes with the id of {redact_uri(holder)}"
                + (" in this run (use a new run_id)" if sid.casefold() in {k.casefold() for k in known} else "")
            )
        ids[i] = sid
        held[sid.casefold()] = f.uri
    derived = [i for i in range(len(found)) if i not in ids]
    bases = {i: _base_id(found[i]) for i in derived}
    shared = Counter(b.casefold() for b in bases.values())
    for i, base in bases.items():
        unique = shared[base.casefold()] == 1 and base.casefold() not in held
        ids[i] = base if unique else f"{base}-{short_hash(public[i])}"
    for salt in range(1, MAX_DISAMBIGUATION_ROUNDS + 1):
        clashing = _clashing(ids, bases, held)
        if not clashing:
            break
        for i in clashing:
            ids[i] = f"{ids[i]}-{short_hash(f'{public[i]}#{salt}')}"
    else:
        names = ", ".join(sorted(public[i] for i in clashing))
        raise SpecError(f"cannot give these sequences distinct ids: {names}; rename them or list them in a manifest")
    return [
        SequenceSource(sequence_id=check_name(ids[i], "sequence id"), kind=f.kind, uri=f.uri, frames=f.frames)
        for i, f in enumerate(found)
    ]


def _clashing(ids: dict[int, str], bases: dict[int, str], held: dict[str, str]) -> list[int]:
    """The derived ids (those in `bases`) that must change: any that takes an id held by a fixed
    or earlier source, and all but a plain (unhashed) one among derived ids that coincide."""
    users: dict[str, list[int]] = {}
    for i, sid in ids.items():
        users.setdefault(sid.casefold(), []).append(i)
    clashing = []
    for key, members in users.items():
        movable = [i for i in members if i in bases]
        if key in held:
            clashing += movable
        elif len(members) > 1:
            plain = [i for i in movable if ids[i] == bases[i]][:1]
            clashing += [i for i in movable if i not in plain]
    return clashing


def _base_id(f: _Found) -> str:
    return sanitize_id(f.rel if f.explicit_id or f.kind == "images" else _strip_ext(f.rel))


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
