"""The Python entry points: run a job, resume a run, look at a run's state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .coordinator import Coordinator
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
