"""Finding capture sequences on any fsspec store and giving each a safe, stable id.

A sequence is either a folder that directly holds images (frames in natural name order), at
any depth under the prefix, or one video file, at any depth. Everything else found under the
prefix is skipped, counted and logged with the reason (`Discovery.skipped`; the counts go into
the run's summary). The id names the sequence's output files and hive partitions, so it is
derived only from the input's relative path (stable across runs), restricted to
[A-Za-z0-9._-], never a path, and never shared by two sequences (`assign_ids`).
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import features
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import PipelineError, SpecError, storage_error
from .names import check_name
from .redaction import REDACTED, get_logger, redact_uri
from .sampling import FrameSelection
from .spec import FrameSampling, JobSpec
from .storage import Store, join

logger = get_logger(__name__)

# What Pillow decodes (AVIF and JPEG 2000 when this Pillow was built with them) and PyAV opens.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm"}
    | ({".avif"} if features.check("avif") else set())
    | ({".jp2", ".j2k"} if features.check("jpg_2000") else set())
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
     ".3gp", ".ogv"}
)
# Image types users have that the pipeline does not decode, with what to do about them.
UNSUPPORTED_IMAGES = {
    **dict.fromkeys((".heic", ".heif"), "HEIC/HEIF needs the pillow-heif plugin, which the pipeline does not load"),
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"), "camera raw files are not "
                    "decoded; export JPEG, PNG or TIFF"),
    ".gif": "GIF is not read (an animation is not a sequence); convert it to a video or to frames",
}
SKIP_REASONS = {
    "hidden": "hidden (the name starts with '.')",
    "not_media": "not an image or video file",
    "unsupported_image": "an image type the pipeline does not decode",
    "image_at_prefix": "an image directly under the prefix (a sequence is a folder of images)",
    "empty_folder": "an empty folder (or one with hidden files only)",
    "duplicate": "listed again in the manifest",
}
MAX_ID_LENGTH = 100
MAX_DISAMBIGUATION_ROUNDS = 4  # more would need a sha256 prefix collision per round
MAX_LOGGED_SKIPS = 50  # skipped inputs logged one by one; the rest only counted


class SequenceSource(BaseModel):
    """One sequence to reconstruct, as found on the input store."""

    model_config = ConfigDict(frozen=True)

    sequence_id: str
    kind: Literal["images", "video"]
    uri: str  # the folder of images, or the video file
    frames: tuple[str, ...] = ()  # image URIs in frame order (empty for videos), before sampling
    sampling: FrameSampling | None = None  # the frames to keep (the spec's, or a manifest row's); None: the spec's

    @property
    def num_frames(self) -> int | None:
        """Frames the model will see, known before decoding for image folders; None for videos."""
        if self.kind != "images":
            return None
        if self.sampling is None:
            return len(self.frames)
        return sum(1 for _ in FrameSelection.plan(self.sampling, self.sampling.image_fps).indices(len(self.frames)))


@dataclass(frozen=True)
class SkippedInput:
    path: str  # relative to the prefix (or the manifest's URI)
    reason: str  # a key of SKIP_REASONS
    detail: str = ""

    def describe(self) -> str:
        return f"{self.path}: {SKIP_REASONS[self.reason]}{f' ({self.detail})' if self.detail else ''}"


@dataclass(frozen=True)
class Discovery:
    """What discovery found: the sequences, sorted by id, and what it skipped."""

    sources: list[SequenceSource]
    skipped: list[SkippedInput]

    def skipped_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))


def discover(spec: JobSpec, *, known: Mapping[str, str] | None = None) -> list[SequenceSource]:
    """All sequences of the spec's input, sorted by id; no two share an id (skipped inputs are logged).

    `known` maps the ids that earlier sessions of the run gave out to their source URIs: those
    sources keep their ids, and no other source takes one of them (see `assign_ids`).
    """
    return discover_inputs(spec, known=known).sources


def discover_inputs(spec: JobSpec, *, known: Mapping[str, str] | None = None) -> Discovery:
    """All sequences of the spec's input, as `discover`, and every input skipped (logged)."""
    where = spec.input.prefix or spec.input.manifest
    assert where is not None
    skipped: list[SkippedInput] = []
    try:
        store = Store(where, spec.storage)
        read = _scan_prefix if spec.input.prefix is not None else _read_manifest
        found = read(store, where, spec.input.sampling, skipped)
    except (PipelineError, FileNotFoundError):
        raise
    except Exception as exc:  # the input store failed us: say why in one line
        raise storage_error(exc, where, endpoint_url=spec.storage.endpoint_url, doing="read the input") from exc
    result = Discovery(sorted(assign_ids(found, known or {}), key=lambda s: s.sequence_id), skipped)
    _log(result, redact_uri(where))
    return result


def _log(result: Discovery, where: str) -> None:
    kinds = Counter(s.kind for s in result.sources)
    logger.info("%s: %d image folder(s), %d video(s)", where, kinds["images"], kinds["video"])
    for item in result.skipped[:MAX_LOGGED_SKIPS]:
        logger.warning("skipped input %s", item.describe())
    if result.skipped:
        counts = ", ".join(f"{n} {reason}" for reason, n in result.skipped_counts().items())
        more = len(result.skipped) - MAX_LOGGED_SKIPS
        logger.warning(
            "skipped %d input(s) under %s: %s%s", len(result.skipped), where, counts,
            f" (the first {MAX_LOGGED_SKIPS} are listed above)" if more > 0 else "",
        )
    unsampled = [
        s for s in result.sources if s.kind == "images" and s.sampling and s.sampling.fps and not s.sampling.image_fps
    ]
    if unsampled:
        logger.warning(
            "fps sampling does not apply to %d image folder(s) without a capture rate (input.image_fps or the "
            "manifest's image_fps column), e.g. %s: they keep every frame (then stride and max_frames)",
            len(unsampled), redact_uri(unsampled[0].uri),
        )


# --- scanning --------------------------------------------------------------------------------


class _Found(BaseModel):
    rel: str  # path relative to the prefix (or the manifest's id/uri), the basis of the id
    kind: Literal["images", "video"]
    uri: str
    frames: tuple[str, ...] = ()
    explicit_id: bool = False
    sampling: FrameSampling | None = None


def _scan_prefix(store: Store, prefix: str, sampling: FrameSampling, skipped: list[SkippedInput]) -> list[_Found]:
    root = store.path(prefix).rstrip("/")
    store.fs.invalidate_cache(root)
    if not store.fs.isdir(root):
        raise SpecError(f"input.prefix {prefix} is not a folder (or does not exist)")
    entries = store.fs.find(root, withdirs=True, detail=True)
    folders: dict[str, list[str]] = {}
    found: list[_Found] = []
    used: set[str] = set()  # folders with a file below them
    hidden: set[str] = set()
    for path in sorted(entries):
        rel = path[len(root) :].strip("/")
        if not rel:
            continue
        parts = rel.split("/")
        dot = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
        if dot is not None:
            top = "/".join(parts[: dot + 1])
            if top not in hidden:
                hidden.add(top)
                skipped.append(SkippedInput(top, "hidden"))
            continue
        if entries[path].get("type") == "directory":
            continue
        parent = posixpath.dirname(rel)
        used.update("/".join(parts[:i]) for i in range(1, len(parts)))
        reason = _file_reason(rel, in_folder=bool(parent))
        if reason is not None:
            skipped.append(reason)
        elif _ext(rel) in VIDEO_EXTENSIONS:
            found.append(_Found(rel=rel, kind="video", uri=store.uri(path), sampling=sampling))
        else:
            folders.setdefault(parent, []).append(path)
    for path in sorted(entries):
        rel = path[len(root) :].strip("/")
        if rel and entries[path].get("type") == "directory" and rel not in used and rel not in hidden:
            if not any(rel.startswith(h + "/") for h in hidden):
                skipped.append(SkippedInput(rel, "empty_folder"))
    for parent, paths in folders.items():
        frames = tuple(store.uri(p) for p in sorted(paths, key=natural_key))
        uri = store.uri(join(root, parent))
        found.append(_Found(rel=parent, kind="images", uri=uri, frames=frames, sampling=sampling))
    return found


def _file_reason(rel: str, *, in_folder: bool) -> SkippedInput | None:
    """Why a (non-hidden) file is not part of a sequence, or None when it is."""
    ext = _ext(rel)
    if ext in VIDEO_EXTENSIONS:
        return None
    if ext in IMAGE_EXTENSIONS:
        return None if in_folder else SkippedInput(rel, "image_at_prefix", "point input.prefix at its folder's parent")
    if ext in UNSUPPORTED_IMAGES:
        return SkippedInput(rel, "unsupported_image", UNSUPPORTED_IMAGES[ext])
    return SkippedInput(rel, "not_media", f"type {ext or 'without extension'}")


def list_images(store: Store, folder_uri: str, skipped: list[SkippedInput] | None = None) -> tuple[str, ...]:
    """Image files directly inside a folder, in natural order (other entries go to `skipped`)."""
    paths = []
    for entry in store.ls(folder_uri):
        name = posixpath.basename(entry["name"].rstrip("/"))
        rel = f"{folder_uri.rstrip('/')}/{name}"
        if name.startswith("."):
            reason: SkippedInput | None = SkippedInput(rel, "hidden")
        elif entry.get("type") != "file":
            continue  # a sub-folder: a manifest names its sequences' folders one by one
        else:
            reason = _file_reason(rel, in_folder=True)
            if reason is None and _ext(name) in VIDEO_EXTENSIONS:
                reason = SkippedInput(rel, "not_media", "a video inside an image folder; list it in its own row")
        if reason is None:
            paths.append(entry["name"])
        elif skipped is not None:
            skipped.append(reason)
    return tuple(store.uri(p) for p in sorted(paths, key=natural_key))


def _read_manifest(
    store: Store, manifest_uri: str, defaults: FrameSampling, skipped: list[SkippedInput]
) -> list[_Found]:
    """A table with a `uri` column (folder or video, absolute or relative to the manifest), an
    optional `sequence_id` column, and optional per-sequence sampling columns (FrameSampling's
    field names; empty cells take the spec's value)."""
    table = _read_table(store, manifest_uri)
    if "uri" not in table.column_names:
        raise SpecError(f"manifest {manifest_uri} has no 'uri' column (columns: {table.column_names})")
    overrides = [c for c in table.column_names if c in FrameSampling.model_fields]
    unknown = sorted(set(table.column_names) - {"uri", "sequence_id", *overrides})
    if unknown:
        logger.warning(
            "manifest %s: columns %s are ignored (known: uri, sequence_id, %s)",
            manifest_uri, ", ".join(unknown), ", ".join(FrameSampling.model_fields),
        )
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    uris = [str(u) for u in table.column("uri").to_pylist()]
    ids = table.column("sequence_id").to_pylist() if "sequence_id" in table.column_names else [None] * len(uris)
    columns = {c: table.column(c).to_pylist() for c in overrides}
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
            skipped.append(SkippedInput(redact_uri(uri), "duplicate", f"row {row}, first listed in row {first}"))
            continue
        rows[full] = (row, given)
        cells = {c: values[row - 1] for c, values in columns.items()}
        sampling = _row_sampling(defaults, cells, manifest_uri, row, uri)
        kind: Literal["images", "video"] = "video" if _ext(full) in VIDEO_EXTENSIONS else "images"
        frames = list_images(store, full, skipped) if kind == "images" else ()
        rel = given or redact_uri(uri).replace(f"{REDACTED}@", "")  # an id never carries a password
        found.append(
            _Found(rel=rel, kind=kind, uri=full, frames=frames, explicit_id=given is not None, sampling=sampling)
        )
    return found


def _row_sampling(
    defaults: FrameSampling, cells: dict[str, Any], manifest_uri: str, row: int, uri: str
) -> FrameSampling:
    """The spec's sampling with a manifest row's non-empty cells on top."""
    given = {k: v for k, v in cells.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if not given:
        return defaults
    try:
        return FrameSampling.model_validate({**defaults.model_dump(), **given})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"manifest {redact_uri(manifest_uri)}, row {row} ({redact_uri(uri)}): {problems}") from None


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
        SequenceSource(
            sequence_id=check_name(ids[i], "sequence id"), kind=f.kind, uri=f.uri, frames=f.frames, sampling=f.sampling
        )
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
