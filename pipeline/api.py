"""The Python entry points: run a job, resume a run, look at a run's state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .commit_record import read_commits
from .coordinator import Coordinator
from .errors import PipelineError, storage_error
from .layout import RunLayout
from .manifest import RunSummary
from .spec import JobSpec, StorageSpec, load_spec
from .storage import Store


def run_job(
    spec: JobSpec | str | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    progress: bool = False,
    retry_failed: bool = False,
    ray_address: str | None = None,
) -> RunSummary:
    """Run (or re-run: committed sequences are skipped) a job.

    It runs on the Ray cluster this process is connected to; else on the one at `ray_address`
    (HOST:PORT, ray://HOST:PORT or "auto") or RAY_ADDRESS, raising InfrastructureError if that
    does not answer within `resources.ray_connect_timeout_s`; else on a local Ray it starts.
    """
    if not isinstance(spec, JobSpec) or overrides:
        spec = load_spec(spec, overrides)
    coordinator = Coordinator(spec.with_run_id(), progress=progress, retry_failed=retry_failed, ray_address=ray_address)
    return coordinator.run()


def load_run_spec(run_uri: str, *, storage: StorageSpec | None = None, overrides: Sequence[str] = ()) -> JobSpec:
    """The stored spec of a run, pointed at the run's current location, with overrides applied."""
    run_uri = run_uri.rstrip("/")
    storage = storage or StorageSpec()
    layout = RunLayout(run_uri)
    output, _, run_id = run_uri.rpartition("/")
    spec = load_spec(layout.spec, overrides, storage_options=storage.for_uri(layout.spec))
    return spec.updated(output=output, run_id=run_id).with_storage_default(storage)


def resume_job(
    run_uri: str,
    *,
    storage: StorageSpec | None = None,
    overrides: Sequence[str] = (),
    progress: bool = False,
    retry_failed: bool = False,
    ray_address: str | None = None,
) -> RunSummary:
    """Continue a run from its stored spec: committed sequences stay, the rest runs."""
    spec = load_run_spec(run_uri, storage=storage, overrides=overrides)
    return run_job(spec, progress=progress, retry_failed=retry_failed, ray_address=ray_address)


def run_status(run_uri: str, *, storage: StorageSpec | None = None, verify: bool = False) -> RunSummary:
    """The state of a run from its compact commit record (no Ray needed; see pipeline.commit_record).

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
    commits = read_commits(store, layout, verify=verify)
    records = commits.records()
    for record in records.values():
        if record.status == "running":  # no driver is running it now (as far as we know)
            record.status = "pending"
    try:
        stored = store.read_json(layout.summary)
        elapsed = float(stored.get("elapsed_s", 0.0))
    except (FileNotFoundError, ValueError):
        elapsed = 0.0
    frames = sum(r.num_frames or 0 for r in records.values() if r.status == "done")
    summary = RunSummary.from_records(run_uri.rsplit("/", 1)[-1], run_uri, list(records.values()), elapsed, frames)
    torn = [{"sequence_id": sid, "problem": problem} for sid, problem in sorted(commits.torn.items())]
    return summary.model_copy(update={"torn": torn}) if torn else summary
