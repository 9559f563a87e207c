"""Atomic, idempotent publication of a sequence's outputs.

An attempt writes under `_staging/<id>/<attempt>/`. Committing it:

1. stores an intent `_commit_intents/<id>.json` (from here on, readers ask the marker, not the
   manifest, whether the sequence is committed; `pipeline.commit_record`);
2. moves the staged files to their final places (over leftovers of an earlier, crashed commit);
3. checks that every output is in place and records its size;
4. writes the commit marker `_commits/<id>.json`, last;
5. drops the staging folder.

Readers trust a sequence only when its marker exists, so a crash at any point leaves either no
marker (the sequence is redone; its leftovers are removed) or the whole sequence. A commit that
fails removes what it moved, unless its marker turns out to exist (a write whose response was
lost): then it did commit. Later `Committer.compact` writes the manifest, which records the
commits, and removes the intents it covers.

Only the coordinator commits, one attempt per sequence at a time, so there is a single writer.
Cleanup of outputs nobody committed checks each sequence's marker right before deleting, so it
never removes a sequence committed meanwhile. Crash points for tests: `pipeline.testing.faults`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from .commit_record import Commits
from .layout import OUTPUT_KINDS, RunLayout
from .manifest import SequenceRecord, write_manifest
from .outputs import StagedOutputs
from .redaction import get_logger, redact
from .storage import Store
from .testing.faults import crash_point

logger = get_logger(__name__)


class Committer:
    """The run's only writer of commit markers, intents and the manifest."""

    def __init__(self, store: Store, layout: RunLayout):
        self.store = store
        self.layout = layout
        self._intents: set[str] = set()  # stored intents that the next manifest write covers
        self._unresolved: set[str] = set()  # failed commits whose marker could not be checked

    # -- committing --------------------------------------------------------------------------

    def commit(
        self, sequence_id: str, attempt_id: str, staged: StagedOutputs, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Publish one attempt's staged outputs; returns the marker record.

        If the sequence is already committed (a duplicate attempt), the existing record wins and
        the staged files are discarded, so nothing is ever published twice.
        """
        start = time.monotonic()
        existing = self._marker(sequence_id)
        if existing is not None:
            self._unresolved.discard(sequence_id)  # an earlier commit whose answer was lost did land
            discard_attempt(self.store, self.layout, sequence_id, attempt_id)
            return existing
        self._write_intent(sequence_id, attempt_id)
        crash_point("commit.intent_written", sequence_id)
        try:
            full = self._publish(sequence_id, attempt_id, staged, record, start)
        except Exception:
            landed = self._roll_back(sequence_id, attempt_id)
            if landed is None:
                raise
            full = landed
        self._unresolved.discard(sequence_id)
        crash_point("commit.marker_written", sequence_id)
        discard_attempt(self.store, self.layout, sequence_id, attempt_id)
        return full

    def _publish(
        self, sid: str, attempt_id: str, staged: StagedOutputs, record: dict[str, Any], start: float
    ) -> dict[str, Any]:
        outputs = {}
        for kind, staged_uri in staged.files.items():
            outputs[kind] = self.layout.final(sid, kind)
            self.store.move(staged_uri, outputs[kind])
            if len(outputs) == 1:
                crash_point("commit.output_moved", sid)
        sizes = {kind: self.store.size(uri) for kind, uri in outputs.items()}  # all in place
        crash_point("commit.outputs_moved", sid)
        timings = dict(record.get("timings", {}))
        timings["commit_s"] = time.monotonic() - start
        full = {
            **record,
            "timings": timings,
            "sequence_id": sid,
            "attempt_id": attempt_id,
            "num_frames": staged.num_frames,
            "num_points": staged.num_points,
            "outputs": outputs,
            "output_bytes": sizes,
            "committed_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        self.store.write_json(self.layout.commit_marker(sid), redact(full))  # last: from here on it is visible
        return full

    def _roll_back(self, sid: str, attempt_id: str) -> dict[str, Any] | None:
        """After a failed commit: its marker if it was written after all, else None once the
        outputs it may have moved are removed (best effort: the intent stays if this fails)."""
        try:
            landed = self._marker(sid)
            if landed is not None:
                logger.warning("commit of %s reported an error but its marker is stored: committed", sid)
                return landed
            _delete_outputs(self.store, self.layout, sid)
        except Exception as exc:
            self._unresolved.add(sid)
            logger.warning("could not roll back the failed commit of %s (the next session will): %s", sid, exc)
        return None

    def uncommit(self, sequence_id: str) -> None:
        """Withdraw a committed sequence (its outputs are torn): intent, marker, then outputs."""
        self._write_intent(sequence_id, None)
        self.store.delete(self.layout.commit_marker(sequence_id))
        _delete_outputs(self.store, self.layout, sequence_id)

    # -- bookkeeping -------------------------------------------------------------------------

    def recover(self, commits: Commits) -> None:
        """Start a session on a run: withdraw torn sequences, remove outputs nobody committed and
        everything staged; the intents found are removed by the first `compact`."""
        self._intents |= commits.intents
        for sid in sorted(commits.torn):
            logger.warning("sequence %s: %s; it will be redone", sid, commits.torn[sid])
            self.uncommit(sid)
        suspects = commits.orphans | (commits.intents - commits.committed.keys())
        clean_uncommitted(self.store, self.layout, set(commits.committed), suspects)

    def compact(self, records: list[SequenceRecord]) -> None:
        """Write the manifest as the compact commit record, then drop the intents it covers."""
        write_manifest(self.store, self.layout, records, covers_commits=True)
        crash_point("manifest.written")
        covered = self._intents - self._unresolved
        try:
            self.store.delete_files([self.layout.intent(sid) for sid in sorted(covered)])
        except Exception as exc:  # they are only re-read, not wrong
            logger.warning("could not remove %d commit intents: %s", len(covered), exc)
            return
        self._intents -= covered

    def _write_intent(self, sid: str, attempt_id: str | None) -> None:
        self.store.write_json(self.layout.intent(sid), {"sequence_id": sid, "attempt_id": attempt_id})
        self._intents.add(sid)

    def _marker(self, sid: str) -> dict[str, Any] | None:
        found = self.store.read_existing([self.layout.commit_marker(sid)])
        return json.loads(next(iter(found.values()))) if found else None


# -- cleanup ----------------------------------------------------------------------------------


def remove_outputs(store: Store, layout: RunLayout, sequence_id: str) -> bool:
    """Delete a sequence's final outputs unless it is committed. The marker is checked right
    before the delete, so a sequence committed since the caller looked is never torn apart.
    Returns whether anything was deleted."""
    if store.exists(layout.commit_marker(sequence_id)):
        return False
    _delete_outputs(store, layout, sequence_id)
    return True


def _delete_outputs(store: Store, layout: RunLayout, sequence_id: str) -> None:
    for kind in OUTPUT_KINDS:
        store.delete(layout.final_owner(sequence_id, kind))


def discard_attempt(store: Store, layout: RunLayout, sequence_id: str, attempt_id: str) -> None:
    """Best-effort removal of an attempt's staging folder."""
    try:
        store.delete(layout.staging(sequence_id, attempt_id))
    except Exception as exc:  # cleanup must never fail a run
        logger.warning("could not clean up staging of %s/%s: %s", sequence_id, attempt_id, exc)


def clean_uncommitted(
    store: Store, layout: RunLayout, committed: set[str], suspects: set[str] | None = None
) -> list[str]:
    """Before (re)starting a run: drop all staging, the outputs of sequences without a commit
    marker, and the temporary files of atomic writes that a killed driver left behind.

    `committed` is what the caller read earlier; `suspects` the sequences that may have outputs
    without a marker (None: list the output folders to find them). Each sequence's marker is
    checked again right before its outputs are deleted. Returns the sequences cleaned."""
    try:
        store.delete(layout.staging_root)
    except Exception as exc:
        logger.warning("could not clean up %s: %s", layout.staging_root, exc)
    for folder in (layout.commits, layout.intents, layout.run_uri):
        store.remove_partial_writes(folder)
    if suspects is None:
        suspects = set()
        for kind in OUTPUT_KINDS:
            for rel in store.list_files(layout.dataset_dir(kind)):
                sid = layout.sequence_of(kind, rel)
                if sid is not None:
                    suspects.add(sid)
    cleaned = [sid for sid in sorted(suspects - committed) if remove_outputs(store, layout, sid)]
    if cleaned:
        logger.info("removed the outputs of %d uncommitted sequence(s): %s", len(cleaned), ", ".join(cleaned[:10]))
    return cleaned


def commit_sequence(
    store: Store,
    layout: RunLayout,
    sequence_id: str,
    attempt_id: str,
    staged: StagedOutputs,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Commit one attempt with a committer of its own (tests and tools; a run keeps one `Committer`)."""
    return Committer(store, layout).commit(sequence_id, attempt_id, staged, record)
