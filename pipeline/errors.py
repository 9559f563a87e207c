"""Error classes that decide what the coordinator does with a failure.

The split matters more than the names: an `InputError` is a property of the data and would fail
again on any machine, so it is never retried; everything else is presumed transient (a lost
node, a flaky store) and retried with backoff; an `InfrastructureError` stops the run because no
amount of retrying a single sequence can fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import RunSummary


class PipelineError(Exception):
    """Base class of the pipeline's own errors."""


class SpecError(PipelineError, ValueError):
    """The job spec or the command line is invalid (exit code 2)."""


class InputError(PipelineError, ValueError):
    """A sequence's input is unusable (unreadable, too short, mixed sizes): fail, do not retry."""


class InfrastructureError(PipelineError, RuntimeError):
    """The run cannot proceed (no cluster, store unreachable, model cannot be built) (exit code 3)."""


class ActorInitError(InfrastructureError):
    """A model actor failed to build its model or load the checkpoint."""


class RunFailedError(PipelineError):
    """A run ended with sequences failed or unfinished; `summary` says which (exit code 1).

    Raised by `run_job` / `resume_job` unless `raise_on_failure=False`, so that a scheduler task
    that calls them fails instead of going green with missing results.
    """

    exit_code = 1

    def __init__(self, summary: RunSummary):
        self.summary = summary
        shown = "; ".join(f"{f['sequence_id']}: {f.get('error') or f.get('error_kind')}" for f in summary.failures[:3])
        more = f" (and {summary.failed - 3} more)" if summary.failed > 3 else ""
        super().__init__(
            f"run {summary.run_id} {summary.status}: {summary.done} of {summary.sequences} sequences done, "
            f"{summary.failed} failed, {summary.pending} unfinished" + (f"; {shown}{more}" if shown else "")
        )

    def __reduce__(self):  # pickle (Ray, Airflow, Prefect) rebuilds it from the summary, not the message
        return type(self), (self.summary,)
