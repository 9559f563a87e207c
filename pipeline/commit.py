"""Atomic, idempotent publication of a sequence's outputs.

An attempt writes under `_staging/<id>/<attempt>/`. Committing it:

1. stores an intent `_commit_intents/<id>.json` (from here on, readers ask the marker, not the
   manifest, whether the sequence is committed; `pipeline.commit_record`);
2. moves the staged files to their final places (over leftovers of an earlier, crashed commit);
3. checks that every output is in place and records the sizes of the core outputs (folder
   outputs, previews and exports, are moved whole);
4. writes the commit marker `_commits/<id>.json`, last;
5. drops the staging folder.

Readers trust a sequence only when its marker exists, so a crash at any point leaves either no
marker (the sequence is redone; its leftovers are removed) or the whole sequence. A commit that
fails removes what it moved, unless its marker turns out to exist (a write whose response was
lost): then it did commit. Later `Committer.compact` writes the manifest, which records the
commits, and removes the intents it covers.

Durability. Each step is atomic (a rename locally, one PUT on object stores), which is what a
killed driver or worker needs. Against a power loss on local disk, intents and markers are
written without an fsync of their own and made durable together, by one `Store.sync` before each
manifest write (`compact`: every 10 s or more while the run goes on, and when a session ends).
A power loss can then undo commits made since the last manifest (they are redone), never serve a
torn one: the next session lists markers and outputs, redoes markers without complete outputs
(torn) and removes outputs without a marker. A lost intent only makes `status` count a commit
late. The manifest, spec and summary are synced as written. Of the staged outputs only the frames
table is synced as written (points, depth and folders are not, as before); the sync before the
manifest flushes them too when the workers write to the same filesystem (a single-machine run),
and one lost to a power loss all the same shows as a torn sequence at the next session's
verification, which redoes it.

Only the coordinator commits, one attempt per sequence at a time, so there is a single writer.
Outputs derived later from a committed sequence (`export`, `report`) are added by
`commit_derived`, which rewrites the marker and leaves the commit state as it is.
Cleanup of outputs nobody committed checks each sequence's marker right before deleting, so it
never removes a sequence committed meanwhile. Crash points for tests: `pipeline.testing.faults`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

from .commit_record import Commits, folder_kinds
from .layout import OUTPUT_KINDS, RunLayout, output_kind
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
        # not synced: a marker that a sync keeps was written after it (and a lost one only delays `status`)
        self._write_intent(sequence_id, attempt_id, durable=False)
        crash_point("commit.intent_written", sequence_id)
        try:
            full = self._publish(sequence_id, attempt_id, staged, record, start)
        except Exception:
            landed = self._roll_back(sequence_id, (*OUTPUT_KINDS, *staged.files))
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
            if output_kind(kind).folder:  # a folder moved onto a leftover one would land inside it
                self.store.delete(outputs[kind])
            self.store.move(staged_uri, outputs[kind])
            if len(outputs) == 1:
                crash_point("commit.output_moved", sid)
        # all in place; the sizes of the core outputs are what verification checks
        sizes = {kind: self.store.size(uri) for kind, uri in outputs.items() if kind in OUTPUT_KINDS}
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
        # last: from here on it is visible (durable at the next `compact`)
        self.store.write_json(self.layout.commit_marker(sid), redact(full), durable=False)
        return full

    def _roll_back(self, sid: str, kinds: tuple[str, ...]) -> dict[str, Any] | None:
        """After a failed commit: its marker if it was written after all, else None once the
        outputs it may have moved are removed (best effort: the intent stays if this fails)."""
        try:
            landed = self._marker(sid)
            if landed is not None:
                logger.warning("commit of %s reported an error but its marker is stored: committed", sid)
                return landed
            _delete_outputs(self.store, self.layout, sid, kinds)
        except Exception as exc:
            self._unresolved.add(sid)
            logger.warning("could not roll back the failed commit of %s (the next session will): %s", sid, exc)
        return None

    def uncommit(self, sequence_id: str, kinds: tuple[str, ...] = tuple(OUTPUT_KINDS)) -> None:
        """Withdraw a committed sequence (its outputs are torn): intent, marker, then outputs."""
        self._write_intent(sequence_id, None)
        self.store.delete(self.layout.commit_marker(sequence_id))
        _delete_outputs(self.store, self.layout, sequence_id, kinds)

    # -- bookkeeping -------------------------------------------------------------------------

    def recover(self, commits: Commits) -> None:
        """Start a session on a run: withdraw torn sequences, remove outputs nobody committed and
        everything staged; the intents found are removed by the first `compact`."""
        self._intents |= commits.intents
        kinds = (*OUTPUT_KINDS, *folder_kinds(self.store, self.layout))
        for sid in sorted(commits.torn):
            logger.warning("sequence %s: %s; it will be redone", sid, commits.torn[sid])
            self.uncommit(sid, kinds)
        suspects = commits.orphans | (commits.intents - commits.committed.keys())
        clean_uncommitted(self.store, self.layout, set(commits.committed), suspects, kinds)

    def compact(self, records: list[SequenceRecord]) -> None:
        """Make the commits so far durable, write the manifest as the compact commit record, then
        drop the intents it covers."""
        self.store.sync()  # before the manifest can vouch for a commit, its marker must be kept
        write_manifest(self.store, self.layout, records, covers_commits=True)
        crash_point("manifest.written")
        covered = self._intents - self._unresolved
        try:
            self.store.delete_files([self.layout.intent(sid) for sid in sorted(covered)])
        except Exception as exc:  # they are only re-read, not wrong
            logger.warning("could not remove %d commit intents: %s", len(covered), exc)
            return
        self._intents -= covered

    def _write_intent(self, sid: str, attempt_id: str | None, *, durable: bool = True) -> None:
        self.store.write_json(
            self.layout.intent(sid), {"sequence_id": sid, "attempt_id": attempt_id}, durable=durable
        )
        self._intents.add(sid)

    def _marker(self, sid: str) -> dict[str, Any] | None:
        found = self.store.read_existing([self.layout.commit_marker(sid)])
        return json.loads(next(iter(found.values()))) if found else None


# -- cleanup ----------------------------------------------------------------------------------


def commit_derived(
    store: Store, layout: RunLayout, sequence_id: str, staged: dict[str, str]
) -> dict[str, Any]:
    """Publish outputs derived later from a committed sequence (exports, previews), replacing
    earlier ones of the same kinds; returns the updated marker record.

    Each kind is swapped in place (old folder removed, staged one moved there), then the marker is
    rewritten to list it. A crash in between leaves the kind missing or unlisted, never mixed with
    an older version; running the export again repairs it. The sequence stays committed throughout
    (its core outputs and their recorded sizes do not change), so no intent is needed.
    """
    marker = store.read_json(layout.commit_marker(sequence_id))
    outputs = dict(marker.get("outputs", {}))
    for kind, staged_uri in staged.items():
        final = layout.final(sequence_id, kind)
        store.delete(layout.final_owner(sequence_id, kind))
        store.move(staged_uri, final)
        outputs[kind] = final
    marker["outputs"] = outputs
    store.write_json(layout.commit_marker(sequence_id), redact(marker))
    return marker


def remove_outputs(
    store: Store, layout: RunLayout, sequence_id: str, kinds: tuple[str, ...] = tuple(OUTPUT_KINDS)
) -> bool:
    """Delete a sequence's final outputs of `kinds` unless it is committed. The marker is checked
    right before the delete, so a sequence committed since the caller looked is never torn apart.
    Returns whether anything was deleted."""
    if store.exists(layout.commit_marker(sequence_id)):
        return False
    _delete_outputs(store, layout, sequence_id, kinds)
    return True


def _delete_outputs(store: Store, layout: RunLayout, sequence_id: str, kinds: tuple[str, ...]) -> None:
    for kind in dict.fromkeys(kinds):
        store.delete(layout.final_owner(sequence_id, kind))


def discard_attempt(store: Store, layout: RunLayout, sequence_id: str, attempt_id: str) -> None:
    """Best-effort removal of an attempt's staging folder."""
    try:
        store.delete(layout.staging(sequence_id, attempt_id))
    except Exception as exc:  # cleanup must never fail a run
        logger.warning("could not clean up staging of %s/%s: %s", sequence_id, attempt_id, exc)


def clean_uncommitted(
    store: Store,
    layout: RunLayout,
    committed: set[str],
    suspects: set[str] | None = None,
    kinds: tuple[str, ...] | None = None,
) -> list[str]:
    """Before (re)starting a run: drop all staging, the outputs of sequences without a commit
    marker, and the temporary files of atomic writes that a killed driver left behind.

    `committed` is what the caller read earlier; `suspects` the sequences that may have outputs
    without a marker (None: list the output folders to find them); `kinds` the outputs to look at
    (None: the core ones and the folder outputs the run holds). Each sequence's marker is checked
    again right before its outputs are deleted. Returns the sequences cleaned."""
    try:
        store.delete(layout.staging_root)
    except Exception as exc:
        logger.warning("could not clean up %s: %s", layout.staging_root, exc)
    for folder in (layout.commits, layout.intents, layout.run_uri):
        store.remove_partial_writes(folder)
    if kinds is None:
        kinds = (*OUTPUT_KINDS, *folder_kinds(store, layout))
    if suspects is None:
        suspects = set()
        for kind in kinds:
            for rel in store.list_files(layout.dataset_dir(kind)):
                sid = layout.sequence_of(kind, rel)
                if sid is not None:
                    suspects.add(sid)
    cleaned = [sid for sid in sorted(suspects - committed) if remove_outputs(store, layout, sid, kinds)]
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
