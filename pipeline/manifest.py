"""The run's bookkeeping: one record per sequence, the Parquet manifest, and the summary.

Commit markers are the truth about which sequences are done; the manifest adds what markers
cannot say (failures, their errors, attempt counts) and is rewritten as the run goes, so a
restarted driver knows which sequences already failed for good. A manifest written by the
committer (`pipeline.commit.Committer.compact`) is also the compact record of the commits: with
the run's commit intents it says which sequences are committed without reading every marker
(see `pipeline.commit_record`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, fields
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from .layout import DEPTH, FRAMES, POINTS, STATE, RunLayout
from .redaction import redact
from .storage import Store

Status = Literal["pending", "running", "done", "failed"]

MANIFEST_SCHEMA = pa.schema(
    [
        ("sequence_id", pa.string()),
        ("status", pa.string()),  # done | failed | pending | running (the driver stopped)
        ("attempts", pa.int32()),
        ("num_frames", pa.int32()),
        ("num_points", pa.int64()),
        ("decode_s", pa.float64()),
        ("infer_s", pa.float64()),
        ("write_s", pa.float64()),
        ("total_s", pa.float64()),
        ("error", pa.string()),
        ("error_kind", pa.string()),  # input | transient | actor_lost
        ("attempt_id", pa.string()),  # of the committed attempt
        ("source_uri", pa.string()),
        ("frames_path", pa.string()),
        ("points_path", pa.string()),
        ("depth_path", pa.string()),
        ("state_path", pa.string()),
        ("committed_at", pa.string()),
        ("engine", pa.string()),  # JSON: the engine settings it ran with, "auto" resolved
        ("output_bytes", pa.map_(pa.string(), pa.int64())),  # output kind -> size, as committed
    ]
)
# schema metadata of a manifest that, with the commit intents, accounts for every commit marker
COVERS_COMMITS = b"zipmap.covers_commits"


@dataclass
class SequenceRecord:
    """Everything the run knows about one sequence; one manifest row."""

    sequence_id: str
    source_uri: str | None = None
    status: Status = "pending"
    attempts: int = 0
    num_frames: int | None = None
    num_points: int | None = None
    decode_s: float | None = None
    infer_s: float | None = None
    write_s: float | None = None
    total_s: float | None = None
    error: str | None = None
    error_kind: str | None = None
    attempt_id: str | None = None
    frames_path: str | None = None
    points_path: str | None = None
    depth_path: str | None = None
    state_path: str | None = None
    committed_at: str | None = None
    engine: str | None = None
    output_bytes: dict[str, int] | None = None

    def output_kinds(self) -> dict[str, int | None]:
        """The outputs a committed sequence has: kind -> size in bytes (None: not recorded, as in
        manifests and markers of earlier versions)."""
        if self.output_bytes:
            return dict(self.output_bytes)
        paths = {FRAMES: self.frames_path, POINTS: self.points_path, DEPTH: self.depth_path, STATE: self.state_path}
        return {kind: None for kind, path in paths.items() if path}

    @classmethod
    def from_marker(cls, marker: dict[str, Any]) -> SequenceRecord:
        timings = dict(marker.get("timings", {}))
        commit_s = timings.get("commit_s") or 0.0  # moving files + writing the marker
        for key in ("write_s", "total_s"):
            if timings.get(key) is not None:
                timings[key] += commit_s
        outputs = marker.get("outputs", {})
        return cls(
            sequence_id=marker["sequence_id"],
            source_uri=marker.get("source_uri"),
            status="done",
            attempts=int(marker.get("attempt", 1)),
            num_frames=marker.get("num_frames"),
            num_points=marker.get("num_points"),
            attempt_id=marker.get("attempt_id"),
            frames_path=outputs.get(FRAMES),
            points_path=outputs.get(POINTS),
            depth_path=outputs.get(DEPTH),
            state_path=outputs.get(STATE),
            committed_at=marker.get("committed_at"),
            engine=json.dumps(marker["engine"], sort_keys=True) if marker.get("engine") else None,
            output_bytes=marker.get("output_bytes"),
            **{k: timings.get(k) for k in ("decode_s", "infer_s", "write_s", "total_s")},
        )


def write_manifest(
    store: Store, layout: RunLayout, records: list[SequenceRecord], *, covers_commits: bool = False
) -> None:
    records = sorted(records, key=lambda r: r.sequence_id)
    columns = {  # column by column: at 100k sequences, row dicts (dataclasses.asdict) cost seconds
        name: pa.array(_column(records, name), type=MANIFEST_SCHEMA.field(name).type) for name in MANIFEST_SCHEMA.names
    }
    schema = MANIFEST_SCHEMA.with_metadata({COVERS_COMMITS: b"1"}) if covers_commits else MANIFEST_SCHEMA
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, schema=schema), buf)
    store.write_bytes(layout.manifest, buf.getvalue())


def _column(records: list[SequenceRecord], name: str) -> list[Any]:
    values = [getattr(r, name) for r in records]
    if name in _FREE_TEXT:  # may hold a URI with credentials, or an error message quoting one
        values = [redact(v) for v in values]
    return values


# columns that hold text from outside the pipeline (the rest are ids, numbers and our own words)
_FREE_TEXT = {"source_uri", "error", "frames_path", "points_path", "depth_path", "state_path"}


@dataclass
class StoredManifest:
    records: dict[str, SequenceRecord]  # by sequence id
    covers_commits: bool  # written by the committer: accounts for every marker but those with an intent


def read_stored_manifest(store: Store, layout: RunLayout) -> StoredManifest:
    """The stored manifest (empty when there is none yet)."""
    try:
        data = store.read_bytes(layout.manifest)
    except FileNotFoundError:
        return StoredManifest({}, covers_commits=False)
    table = pq.read_table(io.BytesIO(data))
    # column by column, then positional records (fields missing in older manifests are None)
    columns = [
        table.column(f.name).to_pylist() if f.name in table.column_names else [None] * table.num_rows
        for f in fields(SequenceRecord)
    ]
    sizes = [f.name for f in fields(SequenceRecord)].index("output_bytes")
    columns[sizes] = [dict(v) if v is not None else None for v in columns[sizes]]
    records = {r.sequence_id: r for r in (SequenceRecord(*row) for row in zip(*columns))}
    covers = (table.schema.metadata or {}).get(COVERS_COMMITS) == b"1"
    return StoredManifest(records, covers_commits=covers)


def read_manifest(store: Store, layout: RunLayout) -> dict[str, SequenceRecord]:
    """The stored manifest's records by id (empty when there is none yet)."""
    return read_stored_manifest(store, layout).records


class RunSummary(BaseModel):
    """The machine-readable result of a run (also stored as <run>/summary.json)."""

    run_id: str
    run_uri: str
    status: Literal["succeeded", "partial", "failed", "incomplete", "running"]  # running: `status` of a live run
    sequences: int
    done: int
    failed: int
    pending: int
    frames: int  # frames of sequences done
    points: int
    elapsed_s: float  # working time over all driver sessions
    frames_per_s: float  # frames / elapsed_s
    failures: list[dict[str, Any]]  # sequence_id, attempts, error
    skipped_inputs: dict[str, int] = {}  # inputs discovery skipped, by reason (pipeline.discovery.SKIP_REASONS)
    running: int = 0  # sequences in flight (`status` of a live run)
    running_sequences: list[dict[str, Any]] = []  # sequence_id, attempt, started_at (on a gang: gang, gang_id)
    driver: dict[str, Any] | None = None  # `status`: the run's driver (state running|dead|finished|stopped, ...)
    # committed sequences whose outputs are missing or incomplete (counted as pending; resume redoes
    # them): sequence_id, problem. Filled in by `status --verify`.
    torn: list[dict[str, str]] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _redacting(self, handler: SerializerFunctionWrapHandler) -> Any:
        return redact(handler(self))  # printed and stored: summary.json, the CLI's output

    @property
    def exit_code(self) -> int:
        """0: every sequence done; 1: some failed or are still pending."""
        return 0 if self.status == "succeeded" else 1

    @classmethod
    def from_records(
        cls,
        run_id: str,
        run_uri: str,
        records: list[SequenceRecord],
        elapsed_s: float,
        frames_processed: int,
        skipped_inputs: dict[str, int] | None = None,
    ) -> RunSummary:
        """`frames_processed` frames were computed in `elapsed_s` (which gives frames_per_s)."""
        elapsed_s = round(elapsed_s, 3)  # the rate from the stored time, so the two agree on short runs too
        done = [r for r in records if r.status == "done"]
        failed = [r for r in records if r.status == "failed"]
        running = sum(r.status == "running" for r in records)
        pending = len(records) - len(done) - len(failed) - running
        if pending or running:
            status = "incomplete"
        elif not failed:
            status = "succeeded"
        else:
            status = "partial" if done else "failed"
        return cls(
            run_id=run_id,
            run_uri=run_uri,
            status=status,
            sequences=len(records),
            done=len(done),
            failed=len(failed),
            pending=pending,
            frames=sum(r.num_frames or 0 for r in done),
            points=sum(r.num_points or 0 for r in done),
            elapsed_s=elapsed_s,
            frames_per_s=round(frames_processed / elapsed_s, 3) if elapsed_s > 0 else 0.0,
            running=running,
            failures=[
                {"sequence_id": r.sequence_id, "attempts": r.attempts, "error_kind": r.error_kind, "error": r.error}
                for r in sorted(failed, key=lambda r: r.sequence_id)
            ],
            skipped_inputs=dict(skipped_inputs or {}),
        )
