"""What a driver session starts from: the input's sequences and what earlier sessions of the run did.

Before taking the run's lease, a session only reads: the stored spec (a run may not change what
its outputs mean), the run's commit record (pipeline.commit_record, verified: so sequences keep
their ids and torn ones are found), and the input (an empty input is an error unless the run has
results). With the lease held, it stores the spec, lets the committer recover (torn sequences
withdrawn, uncommitted leftovers removed) and builds the sequence table: committed sequences,
failures from the manifest (unless retried), the rest pending with the frame counts the progress
total needs.
"""

from __future__ import annotations

from pydantic import ValidationError

from .commit import Committer
from .commit_record import Commits, read_commits
from .discovery import Discovery, SequenceSource, discover_inputs
from .errors import SpecError
from .layout import RunLayout
from .lease import Lease
from .logs import log_event
from .manifest import SequenceRecord
from .redaction import get_logger, redact_uri
from .sequence_table import SequenceTable
from .spec import RESOURCE_ENGINE_FIELDS, JobSpec
from .storage import Store

logger = get_logger(__name__)


def read_previous(store: Store, layout: RunLayout) -> Commits:
    """What earlier sessions left, verified: markers win, torn sequences and orphans are found."""
    return read_commits(store, layout, verify=True)


def known_ids(previous: Commits) -> dict[str, str]:
    """Ids given out before, by source URI: discovery keeps them stable."""
    known = {r.sequence_id: r.source_uri for r in previous.manifest.values() if r.source_uri}
    known.update({sid: r.source_uri for sid, r in previous.committed.items() if r.source_uri})
    return known


def check_same_results(store: Store, layout: RunLayout, spec: JobSpec) -> None:
    """Refuse to continue a run with a spec that would produce different outputs; log the engine
    settings that may change (where activations live, over how many GPUs a long sequence spreads)."""
    try:
        stored = JobSpec.model_validate(store.read_json(layout.spec))
    except FileNotFoundError:
        return
    except (ValueError, ValidationError) as exc:
        raise SpecError(f"{layout.spec} is not a valid job spec: {exc}") from None
    before, now = stored.result_fields(), spec.result_fields()
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        raise SpecError(
            f"run {spec.run_id} was started with different {', '.join(changed)} settings; "
            "its committed outputs would not match: use a new run_id"
        )
    moved = {
        f"engine.{k}": [getattr(stored.engine, k), getattr(spec.engine, k)]
        for k in RESOURCE_ENGINE_FIELDS
        if getattr(stored.engine, k) != getattr(spec.engine, k)
    }
    if moved:
        text = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in moved.items())
        log_event(
            logger, "resume_settings_changed", settings=moved,
            message=f"resume_settings_changed {text}: accepted (where activations live and the order "
            "of float sums change, not what the outputs mean)",
        )


def find_sources(spec: JobSpec, previous: Commits) -> Discovery:
    """The input's sequences (and what discovery skipped); an empty or missing input is a spec error
    unless the run has results."""
    try:
        found = discover_inputs(spec, known=known_ids(previous))
    except SpecError as exc:
        if not previous.committed:
            raise
        logger.warning("input unavailable (%s); keeping the run's committed sequences", exc)
        return Discovery([], [])
    if not found.sources and not previous.committed:
        where = spec.input.prefix or spec.input.manifest
        raise SpecError(f"no sequences found in {redact_uri(where)} (sub-folders of images, or video files)")
    return found


def restore_table(
    committer: Committer, spec: JobSpec, sources: list[SequenceSource], previous: Commits, *, retry_failed: bool
) -> SequenceTable:
    """Store the spec, recover the commit state (torn sequences withdrawn, what no marker vouches
    for removed) and build the table (lease held)."""
    committed = previous.committed
    committer.store.write_bytes(committer.layout.spec, spec.to_json().encode())
    committer.recover(previous)
    table = SequenceTable()
    for record in committed.values():
        table.add(record)
    for source in sources:
        sid = source.sequence_id
        if sid in committed:
            continue
        earlier = previous.manifest.get(sid)
        if earlier is not None and earlier.status == "failed" and not retry_failed:
            table.add(earlier)
            continue
        expected = source.num_frames  # after sampling; None for videos (known once decoded)
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
