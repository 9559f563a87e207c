"""A run's state as `zipmap-pipeline status` reports it, without Ray.

Which sequences are done comes from the run's compact commit record (pipeline.commit_record;
with `verify`, from every marker and output, which also finds torn sequences), failures from the
manifest, and whether a driver is working on the run from its lease (pipeline.lease): a lease renewed within
its expiry means the run is running (its heartbeat lists the sequences in flight and the time
worked so far), a stale one that its driver died, a released one that the driver finished or
stopped.
"""

from __future__ import annotations

import time
from typing import Any

from .commit_record import read_commits
from .errors import PipelineError, storage_error
from .layout import RunLayout
from .lease import Lease, read_lease
from .manifest import RunSummary
from .spec import StorageSpec
from .storage import Store


def run_status(run_uri: str, *, storage: StorageSpec | None = None, verify: bool = False) -> RunSummary:
    """The state of a run from its commit record, manifest and lease (no Ray needed).

    With `verify`, the markers and every output are listed too: committed sequences whose outputs
    are missing are reported in `torn` (and counted as pending: `resume` redoes them).
    """
    run_uri = run_uri.rstrip("/")
    try:
        return _run_status(run_uri, storage, verify)
    except PipelineError:
        raise
    except Exception as exc:  # the store failed us: one line that says why, not a client's traceback
        raise storage_error(exc, run_uri, endpoint_url=(storage or StorageSpec()).endpoint_url, doing="read") from exc


def _run_status(run_uri: str, storage: StorageSpec | None, verify: bool) -> RunSummary:
    store, layout = Store(run_uri, storage), RunLayout(run_uri)
    lease = read_lease(store, layout)  # before the commits: a driver finishing meanwhile looks running, not dead
    commits = read_commits(store, layout, verify=verify)
    records = commits.records()
    now = time.time()
    live = lease is not None and lease.holder_alive(now)
    in_flight = {r["sequence_id"]: r for r in lease.progress.get("running_sequences", [])} if live else {}
    for sid, record in records.items():
        if record.status == "running" or (sid in in_flight and record.status == "pending"):
            record.status = "running" if sid in in_flight else "pending"
    stored = _stored_summary(store, layout)
    elapsed = _elapsed(stored, lease, live, now)
    skipped = lease.progress.get("skipped_inputs") if lease is not None else None
    frames = sum(r.num_frames or 0 for r in records.values() if r.status == "done")
    summary = RunSummary.from_records(
        run_uri.rsplit("/", 1)[-1], run_uri, list(records.values()), elapsed, frames,
        skipped_inputs=stored.get("skipped_inputs") if skipped is None else skipped,
    )
    running = [  # the heartbeat may be a second older than a marker: done is done
        in_flight[sid]
        for sid in sorted(in_flight, key=lambda s: in_flight[s]["started_at"])
        if sid in records and records[sid].status == "running"
    ]
    return summary.model_copy(
        update={
            "status": "running" if live else summary.status,
            "running_sequences": running,
            "driver": _driver(lease, live, summary, now),
            "torn": [{"sequence_id": sid, "problem": problem} for sid, problem in sorted(commits.torn.items())],
        }
    )


def _stored_summary(store: Store, layout: RunLayout) -> dict[str, Any]:
    """The summary the last driver session wrote ({} if none)."""
    try:
        return store.read_json(layout.summary)
    except (FileNotFoundError, ValueError):
        return {}


def _elapsed(stored: dict[str, Any], lease: Lease | None, live: bool, now: float) -> float:
    """Working time over all sessions: the heartbeat's (plus its age, while live), else the summary's."""
    if lease is not None and "elapsed_s" in lease.progress:
        return float(lease.progress["elapsed_s"]) + (lease.age(now) if live else 0.0)
    return float(stored.get("elapsed_s", 0.0))


def _driver(lease: Lease | None, live: bool, summary: RunSummary, now: float) -> dict[str, Any] | None:
    if lease is None:
        return None
    if live:
        state = "running"
    elif lease.state == "running":
        state = "dead"
    else:
        state = "stopped" if summary.pending or summary.running else "finished"
    progress = lease.progress
    return {
        "state": state,
        "host": lease.data.get("host"),
        "pid": lease.data.get("pid"),
        "since": lease.data.get("since"),
        "heartbeat_at": lease.data.get("renewed_at"),
        "heartbeat_age_s": round(lease.age(now), 1),
        "lease_expiry_s": lease.data.get("expiry_s"),
        "current_frames_per_s": progress.get("frames_per_s") if live else None,
        "eta_s": progress.get("eta_s") if live else None,
        "last_event_at": progress.get("last_event_at"),
    }
