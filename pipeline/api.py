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

from .coordinator import Coordinator
from .errors import RunFailedError
from .layout import RunLayout
from .manifest import RunSummary
from .spec import JobSpec, StorageSpec, load_spec
from .status import run_status

__all__ = ["load_run_spec", "resume_job", "run_job", "run_status"]


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

