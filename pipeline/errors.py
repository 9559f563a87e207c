"""Error classes that decide what the coordinator does with a failure.

The split matters more than the names: an `InputError` is a property of the data and would fail
again on any machine, so it is never retried; everything else is presumed transient (a lost
node, a flaky store) and retried with backoff; an `InfrastructureError` stops the run because no
amount of retrying a single sequence can fix it.
"""

from __future__ import annotations


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
