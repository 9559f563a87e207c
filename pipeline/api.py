"""The Python entry points: run a job, resume a run, look at a run's state.

`run_job` and `resume_job` raise `RunFailedError` (carrying the summary) when any sequence failed
or is unfinished, unless `raise_on_failure=False`. Raising is the default because the callers that
do not look at the result are schedulers (Airflow, Prefect, Dagster, cron): a returned "partial"
summary would mark their task green with results missing. Code that accepts partial results
says so, either with `raise_on_failure=False` or by catching the error and reading `.summary`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .commit import committed_sequences
from .coordinator import Coordinator
from .errors import PipelineError, RunFailedError, storage_error
from .layout import RunLayout
from .manifest import RunSummary, SequenceRecord, read_manifest
from .spec import JobSpec, StorageSpec, load_spec
from .storage import Store


def run_job(
    spec: JobSpec | str | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    progress: bool = False,
    retry_failed: bool = False,
    ray_address: str | None = None,
    raise_on_failure: bool = True,
) -> RunSummary:
    """Run (or re-run: committed sequences are skipped) a job.

    It runs on the Ray cluster this process is connected to; else on the one at `ray_address`
    (HOST:PORT, ray://HOST:PORT or "auto") or RAY_ADDRESS, raising InfrastructureError if that
    does not answer within `resources.ray_connect_timeout_s`; else on a local Ray it starts.

    Returns the summary when every sequence is done; otherwise raises `RunFailedError` with the
    summary, or returns it when `raise_on_failure=False` (the CLI does, and exits 1).
    """
    if not isinstance(spec, JobSpec) or overrides:
        spec = load_spec(spec, overrides)
    coordinator = Coordinator(spec.with_run_id(), progress=progress, retry_failed=retry_failed, ray_address=ray_address)
    summary = coordinator.run()
    if raise_on_failure and summary.status != "succeeded":
        raise RunFailedError(summary)
    return summary


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
    raise_on_failure: bool = True,
) -> RunSummary:
    """Continue a run from its stored spec: committed sequences stay, the rest runs (raises as `run_job`)."""
    spec = load_run_spec(run_uri, storage=storage, overrides=overrides)
    return run_job(
        spec,
        progress=progress,
        retry_failed=retry_failed,
        ray_address=ray_address,
        raise_on_failure=raise_on_failure,
    )


def run_status(run_uri: str, *, storage: StorageSpec | None = None) -> RunSummary:
    """The state of a run from its manifest and commit markers (no Ray needed)."""
    run_uri = run_uri.rstrip("/")
    try:
        return _run_status(run_uri, storage)
    except PipelineError:
        raise
    except Exception as exc:  # the store failed us: one line that says why, not a client's traceback
        raise storage_error(exc, run_uri, endpoint_url=(storage or StorageSpec()).endpoint_url, doing="read") from exc


def _run_status(run_uri: str, storage: StorageSpec | None) -> RunSummary:
    store, layout = Store(run_uri, storage), RunLayout(run_uri)
    records: dict[str, SequenceRecord] = read_manifest(store, layout)
    for sid, marker in committed_sequences(store, layout).items():
        records[sid] = SequenceRecord.from_marker(marker)
    for record in records.values():
        if record.status == "running":  # no driver is running it now (as far as we know)
            record.status = "pending"
    try:
        stored = store.read_json(layout.summary)
        elapsed = float(stored.get("elapsed_s", 0.0))
        skipped = dict(stored.get("skipped_inputs") or {})
    except (FileNotFoundError, ValueError):
        elapsed, skipped = 0.0, {}
    frames = sum(r.num_frames or 0 for r in records.values() if r.status == "done")
    return RunSummary.from_records(
        run_uri.rsplit("/", 1)[-1], run_uri, list(records.values()), elapsed, frames, skipped_inputs=skipped
    )
