"""Failures on purpose, for tests: a worker or the driver dies at a chosen point, work is slowed down.

Nothing here can be switched on by a job spec. A fault plan lives in the environment variable
`ZIPMAP_TEST_FAULTS` (JSON of `FaultPlan`) of the process that should fail; a driver hands it on
to its model actors through their Ray runtime environment. Without the variable every hook is a
no-op that costs one dictionary lookup.

    with injected(FaultPlan(crash_point="commit.outputs_moved", crash_sequence="b", once_file=...)):
        run_job(spec)                                  # or: env={**os.environ, **plan.env()}

Crash points of the commit protocol (`pipeline.commit`), in the order a commit passes them:

- `commit.intent_written`: the intent is stored, no output has moved yet
- `commit.output_moved`: the first output is in its final place, the others are not
- `commit.outputs_moved`: every output is in place, the marker is not written
- `commit.marker_written`: the marker is written; staging, intent and manifest are not updated
- `manifest.written`: the manifest records the commits, their intents are not yet removed

A crash is `os._exit(CRASH_EXIT_CODE)`: no `finally`, no atexit, no flush, as when a process is
killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

ENV = "ZIPMAP_TEST_FAULTS"
CRASH_EXIT_CODE = 86
COMMIT_CRASH_POINTS = (
    "commit.intent_written",
    "commit.output_moved",
    "commit.outputs_moved",
    "commit.marker_written",
    "manifest.written",
)
ACTOR_CRASH_POINT = "actor.frame_written"  # in the model actor, after a frame of the sequence is written


class FaultPlan(BaseModel):
    """What to break. A crash happens at `crash_point` while handling `crash_sequence` (any
    sequence when None), and only while `once_file` does not exist (it is created just before)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crash_point: str | None = None
    crash_sequence: str | None = None
    once_file: str | None = None
    delay_s: float = Field(default=0.0, ge=0)  # sleep per sequence in the engine, before inference
    write_delay_s: float = Field(default=0.0, ge=0)  # sleep per sequence in the model actor, before its files

    def env(self) -> dict[str, str]:
        """Environment variables that switch this plan on in a child process."""
        return {ENV: self.model_dump_json()}


def active() -> FaultPlan | None:
    """The plan of this process, if a test switched one on."""
    raw = os.environ.get(ENV)
    return FaultPlan.model_validate_json(raw) if raw else None


@contextlib.contextmanager
def injected(plan: FaultPlan) -> Iterator[FaultPlan]:
    """Switch a plan on in this process (and, through `ray_runtime_env`, in the actors it starts)."""
    saved = os.environ.get(ENV)
    os.environ[ENV] = plan.model_dump_json()
    try:
        yield plan
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved


def ray_runtime_env() -> dict | None:
    """The runtime environment that hands this process's plan on to Ray actors (None: no plan)."""
    raw = os.environ.get(ENV)
    return {"env_vars": {ENV: raw}} if raw else None


def crash_point(name: str, sequence_id: str | None = None) -> None:
    """Exit this process at once if the active plan says so."""
    plan = active()
    if plan is None or plan.crash_point != name:
        return
    if plan.crash_sequence is not None and plan.crash_sequence != sequence_id:
        return
    if plan.once_file is not None:
        if os.path.exists(plan.once_file):
            return
        with open(plan.once_file, "w") as f:
            json.dump({"pid": os.getpid(), "point": name, "sequence_id": sequence_id}, f)
    os._exit(CRASH_EXIT_CODE)


def delay() -> None:
    """Sleep as long as the active plan says (slows work down so tests can interfere)."""
    plan = active()
    if plan is not None and plan.delay_s:
        time.sleep(plan.delay_s)


def write_delay() -> None:
    """Sleep as long as the active plan says before a sequence's files are written (a slow store)."""
    plan = active()
    if plan is not None and plan.write_delay_s:
        time.sleep(plan.write_delay_s)
