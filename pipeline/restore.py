"""What a driver session starts from: the input's sequences and what earlier sessions of the run did.

Before taking the run's lease, a session only reads: the stored spec (a run may not change what
its outputs mean) and the input (an empty input is an error unless the run has results). With
the lease held, it stores the spec, drops uncommitted leftovers and builds the sequence table:
committed sequences from their markers, failures from the manifest (unless retried), the rest
pending with the frame counts the progress total needs.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from .commit import clean_uncommitted, committed_sequences
from .discovery import SequenceSource, discover
from .errors import SpecError
from .layout import RunLayout
from .lease import Lease
from .manifest import SequenceRecord, read_manifest
from .sequence_table import SequenceTable
from .spec import JobSpec, redact_uri
from .storage import Store

logger = logging.getLogger(__name__)


def check_same_results(store: Store, layout: RunLayout, spec: JobSpec) -> bool:
    """Refuse to continue a run with a spec that would produce different outputs; returns whether
    the run exists already."""
    try:
        stored = JobSpec.model_validate(store.read_json(layout.spec))
    except FileNotFoundError:
        return False
    except (ValueError, ValidationError) as exc:
        raise SpecError(f"{layout.spec} is not a valid job spec: {exc}") from None
    before, now = stored.result_fields(), spec.result_fields()
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        raise SpecError(
            f"run {spec.run_id} was started with different {', '.join(changed)} settings; "
            "its committed outputs would not match: use a new run_id"
        )
    return True


def find_sources(store: Store, layout: RunLayout, spec: JobSpec, *, resuming: bool) -> list[SequenceSource]:
    """The input's sequences; an empty or missing input is a spec error unless the run has results."""

    def has_results() -> bool:
        return resuming and bool(store.ls(layout.commits))

    try:
        sources = discover(spec)
    except SpecError as exc:
        if not has_results():
            raise
        logger.warning("input unavailable (%s); keeping the run's committed sequences", exc)
        return []
    if not sources and not has_results():
        where = spec.input.prefix or spec.input.manifest
        raise SpecError(f"no sequences found in {redact_uri(where)} (sub-folders of images, or video files)")
    return sources


def restore_table(
    store: Store, layout: RunLayout, spec: JobSpec, sources: list[SequenceSource], *, retry_failed: bool
) -> SequenceTable:
    """Store the spec, clean up what no marker vouches for, and build the table (lease held)."""
    committed = committed_sequences(store, layout)
    store.write_bytes(layout.spec, spec.to_json().encode())
    before = read_manifest(store, layout)
    clean_uncommitted(store, layout, set(committed))
    table = SequenceTable()
    for marker in committed.values():
        table.add(SequenceRecord.from_marker(marker))
    for source in sources:
        sid = source.sequence_id
        if sid in committed:
            continue
        earlier = before.get(sid)
        if earlier is not None and earlier.status == "failed" and not retry_failed:
            table.add(earlier)
            continue
        expected = None if source.num_frames is None else spec.input.kept_frames(source.num_frames)
        attempts = earlier.attempts if earlier else 0
        table.add(SequenceRecord(sid, source_uri=source.uri, num_frames=expected, attempts=attempts), expected)
    return table


def previous_elapsed(store: Store, layout: RunLayout, previous: Lease | None) -> float:
    """Working time of earlier sessions: the last lease knows it even when its driver was killed."""
    if previous is not None and "elapsed_s" in previous.progress:
        return float(previous.progress["elapsed_s"])
    try:
        return float(store.read_json(layout.summary).get("elapsed_s", 0.0))
    except (FileNotFoundError, ValueError):
        return 0.0
