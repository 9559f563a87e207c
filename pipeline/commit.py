"""Atomic, idempotent publication of a sequence's outputs.

An attempt writes under `_staging/<id>/<attempt>/`. Committing moves those files to their final
places and then writes the commit marker `_commits/<id>.json`, last. Readers trust a sequence
only when its marker exists, so a crash at any point leaves either nothing visible or the whole
sequence; the next commit of that sequence first clears whatever a crashed commit left behind.
Only the coordinator commits, one attempt per sequence at a time, so there is a single writer.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from .layout import OUTPUT_KINDS, RunLayout
from .outputs import StagedOutputs
from .redaction import get_logger, redact
from .storage import Store

logger = get_logger(__name__)


def commit_sequence(
    store: Store,
    layout: RunLayout,
    sequence_id: str,
    attempt_id: str,
    staged: StagedOutputs,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Publish one attempt's staged outputs; returns the marker record.

    If the sequence is already committed (a duplicate attempt), the existing record wins and
    the staged files are discarded, so nothing is ever published twice.
    """
    start = time.monotonic()
    marker = layout.commit_marker(sequence_id)
    if store.exists(marker):
        discard_attempt(store, layout, sequence_id, attempt_id)
        return store.read_json(marker)
    remove_outputs(store, layout, sequence_id)
    outputs = {}
    for kind, staged_uri in staged.files.items():
        final = layout.final(sequence_id, kind)
        store.move(staged_uri, final)
        outputs[kind] = final
    timings = dict(record.get("timings", {}))
    timings["commit_s"] = time.monotonic() - start
    full = {
        **record,
        "timings": timings,
        "sequence_id": sequence_id,
        "attempt_id": attempt_id,
        "num_frames": staged.num_frames,
        "num_points": staged.num_points,
        "outputs": outputs,
        "committed_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    store.write_json(marker, redact(full))  # last: from here on the sequence is visible
    discard_attempt(store, layout, sequence_id, attempt_id)
    return full


def committed_sequences(store: Store, layout: RunLayout) -> dict[str, dict[str, Any]]:
    """Marker records of all committed sequences, by id (read fresh from the store)."""
    uris = [u for u in store.find(layout.commits) if u.endswith(".json")]
    records = {}
    for data in store.read_many(uris):
        record = json.loads(data)
        records[record["sequence_id"]] = record
    return records


def remove_outputs(store: Store, layout: RunLayout, sequence_id: str) -> None:
    """Delete any final outputs of a sequence (leftovers of a commit that never finished)."""
    for kind in OUTPUT_KINDS:
        store.delete(layout.final_owner(sequence_id, kind))


def discard_attempt(store: Store, layout: RunLayout, sequence_id: str, attempt_id: str) -> None:
    """Best-effort removal of an attempt's staging folder."""
    try:
        store.delete(layout.staging(sequence_id, attempt_id))
    except Exception as exc:  # cleanup must never fail a run
        logger.warning("could not clean up staging of %s/%s: %s", sequence_id, attempt_id, exc)


def clean_uncommitted(store: Store, layout: RunLayout, committed: set[str]) -> None:
    """Before (re)starting a run: drop all staging, any outputs without a commit marker, and the
    temporary files of marker, manifest or summary writes that a killed driver left behind."""
    try:
        store.delete(layout.staging_root)
    except Exception as exc:
        logger.warning("could not clean up %s: %s", layout.staging_root, exc)
    for folder in (layout.commits, layout.run_uri):
        store.remove_partial_writes(folder)
    for kind in OUTPUT_KINDS:
        for entry in store.ls(layout.dataset_dir(kind)):
            owner = layout.owner_sequence(kind, entry["name"])
            if owner is not None and owner not in committed:
                store.delete(store.uri(entry["name"]))
