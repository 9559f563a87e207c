"""What a run has committed, read without one GET per commit marker.

Markers (`_commits/<id>.json`) are the truth, but reading them all costs one request each (about
4 ms on a local S3 endpoint, minutes at 100k sequences). The committer keeps a compact record
instead (`pipeline.commit`): the manifest, rewritten now and then, lists every committed sequence,
and an intent `_commit_intents/<id>.json` is stored before a sequence's commit state changes (its
outputs move, or its marker is removed) and removed once a manifest records the outcome. So:

    committed = the manifest's done rows, except that every sequence with an intent is asked
                of its marker (a few, concurrently)

That is one manifest GET, one short listing and a few marker GETs. Manifests without the
committer's mark (older runs) are completed from a listing of the markers (names only, a request
per 1000), reading only markers the manifest does not know.

`verify=True` (resume, `read_outputs`, `status --verify`) also lists the markers and every output
folder: a done row without a marker is not done (markers win), a marker without the manifest row
is read, and a committed sequence whose outputs are missing or have another size than committed is
reported as torn. Listing costs a request per 1000 files on S3, nothing per sequence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .layout import EXPORTS, OUTPUT_KINDS, PREVIEWS, RunLayout, final_name
from .manifest import SequenceRecord, read_stored_manifest
from .names import SAFE_NAME
from .redaction import get_logger
from .storage import PARTIAL_WRITE_INFIX, Store

logger = get_logger(__name__)


@dataclass
class Commits:
    """A run's commit state, reconciled from its manifest, intents and markers."""

    manifest: dict[str, SequenceRecord]  # the stored manifest's rows (failures, attempts, ...)
    committed: dict[str, SequenceRecord]  # committed sequences (verified complete when `verified`)
    intents: set[str]  # sequences whose commit state may differ from the manifest
    verified: bool = False
    torn: dict[str, str] = field(default_factory=dict)  # verified: marker present, outputs not: why
    torn_records: dict[str, SequenceRecord] = field(default_factory=dict)  # their commit records
    orphans: set[str] = field(default_factory=set)  # verified: outputs without a marker
    markers: set[str] | None = None  # verified (or an older run): the ids that have a marker
    markers_read: int = 0  # marker GETs this reading needed

    def records(self) -> dict[str, SequenceRecord]:
        """One record per known sequence: the manifest's rows, committed sequences from the commit
        record, and sequences once done but not committed (any more), or torn, as pending."""
        records = dict(self.manifest)
        # only these can be done in the manifest without being committed
        maybe_withdrawn = self.intents | self.torn.keys()
        if self.markers is not None:
            maybe_withdrawn |= records.keys() - self.committed.keys()
        for sid in maybe_withdrawn - self.committed.keys():
            before = records.get(sid) or self.torn_records.get(sid)
            if before is not None and before.status == "done":
                records[sid] = SequenceRecord(
                    sequence_id=sid,
                    source_uri=before.source_uri,
                    num_frames=before.num_frames,
                    attempts=before.attempts,
                    error=self.torn.get(sid),
                    error_kind="torn" if sid in self.torn else None,
                )
        records.update(self.committed)
        return records


def marker_ids(store: Store, layout: RunLayout) -> set[str]:
    """The ids of all commit markers (one listing; no marker is read)."""
    names = store.list_names(layout.commits)
    return {n[: -len(".json")] for n in names if n.endswith(".json") and PARTIAL_WRITE_INFIX not in n}


def intent_ids(store: Store, layout: RunLayout) -> set[str]:
    names = store.list_names(layout.intents)
    return {n[: -len(".json")] for n in names if n.endswith(".json") and PARTIAL_WRITE_INFIX not in n}


def read_markers(store: Store, layout: RunLayout, ids: set[str]) -> dict[str, dict]:
    """The markers of `ids` that exist, by id (concurrent GETs on object stores)."""
    uris = {layout.commit_marker(sid): sid for sid in sorted(ids)}
    return {uris[uri]: json.loads(data) for uri, data in store.read_existing(list(uris)).items()}


def committed_markers(store: Store, layout: RunLayout) -> dict[str, dict]:
    """Every commit marker, by id: for what only markers hold (the folder outputs `export` and
    `report` add after the commit). A listing and a GET per marker, concurrent on object stores."""
    return read_markers(store, layout, marker_ids(store, layout))


def folder_kinds(store: Store, layout: RunLayout) -> list[str]:
    """The folder outputs a run may hold: the previews, and one kind per export format found."""
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in store.ls(layout.dataset_dir(EXPORTS))]
    return [PREVIEWS, *(f"{EXPORTS}/{name}" for name in names if SAFE_NAME.fullmatch(name))]


def read_commits(store: Store, layout: RunLayout, *, verify: bool = False) -> Commits:
    """The run's commit state (see the module docstring for what it reads)."""
    stored = read_stored_manifest(store, layout)
    committed = {sid: r for sid, r in stored.records.items() if r.status == "done"}
    intents = intent_ids(store, layout)
    ask = set(intents)
    markers = None
    if verify or not stored.covers_commits:
        markers = marker_ids(store, layout)
        committed = {sid: r for sid, r in committed.items() if sid in markers}  # markers win
        ask |= markers - committed.keys()
    found = read_markers(store, layout, ask)
    for sid in ask:
        if sid in found:
            committed[sid] = SequenceRecord.from_marker(found[sid])
        else:
            committed.pop(sid, None)
    commits = Commits(stored.records, committed, intents, markers=markers, markers_read=len(ask))
    if verify:
        _verify_outputs(store, layout, commits)
    return commits


def _verify_outputs(store: Store, layout: RunLayout, commits: Commits) -> None:
    """List every output folder once: torn committed sequences, and outputs nobody committed."""
    present: dict[str, dict[str, int]] = {}  # sid -> kind -> size of its final file
    owners: set[str] = set()  # sequences that own anything in an output folder
    for kind in (*OUTPUT_KINDS, *folder_kinds(store, layout)):
        for rel, size in store.list_files(layout.dataset_dir(kind)).items():
            sid = layout.sequence_of(kind, rel)
            if sid is None:
                continue
            owners.add(sid)
            if rel == final_name(sid, kind):
                present.setdefault(sid, {})[kind] = size
    for sid, record in sorted(commits.committed.items()):
        problems = []
        for kind, size in record.output_kinds().items():
            found = present.get(sid, {}).get(kind)
            if found is None:
                problems.append(f"{kind} missing")
            elif size is not None and found != size:
                problems.append(f"{kind} has {found} bytes, committed {size}")
        if problems:
            commits.torn[sid] = "committed, but " + ", ".join(problems)
    for sid in commits.torn:
        commits.torn_records[sid] = commits.committed.pop(sid)
        logger.warning("sequence %s: %s", sid, commits.torn[sid])
    commits.orphans = owners - (commits.markers or set())
    commits.verified = True
