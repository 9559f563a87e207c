"""Long sequences on gangs: which sequences go to a gang, how large it is, and the loop that runs them.

A sequence with at least `resources.gang_min_frames` frames (after sampling, known before decoding
for image folders) runs on a gang of G = `engine.frame_parallel` model actors (pipeline.gang), one
sequence over their G devices; every other sequence runs on the pool of single actors. The
devices are held by the pool's actors, so a run goes in two phases: first the pool runs the short
sequences (retries included), then it is shut down, releasing its devices, and one gang runs the
long sequences one after the other. Both phases never compete for a device, a run without long
sequences never starts a gang, and a gang's start-up (G model loads, a process group) is paid once
per run, not per sequence. Short sequences first: they are the many, so the run's progress and
its first outputs come early.

A gang attempt is a pipeline attempt like any other: the coordinator (`AttemptHost`) starts,
commits and fails it with its usual rules. When a member fails, the whole attempt fails, the
gang is shut down and the retry runs on a fresh gang; bad input (a decode that fails) leaves the
gang as it is.

Videos: their frame count is known only once decoded, so they go to the pool, whose actor hands
a long one back (`LongSequence`, not counted as an attempt) before running it; the table moves it
to the gang lane, and the gang decodes it again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray.exceptions import RayError

from zipmap_core.engines.config import MAX_FRAME_PARALLEL

from .discovery import SequenceSource
from .errors import InfrastructureError, SpecError
from .execution import ActorPlan, Executor, classify, describe
from .gang import Gang
from .logs import log_event
from .redaction import get_logger
from .sequence_table import GANG, RunningAttempt, SequenceTable
from .spec import JobSpec

logger = get_logger(__name__)

POLL_S = 1.0
MAX_START_FAILURES = 3  # gangs that die while starting, in a row, before the run stops


@dataclass(frozen=True)
class GangPlan:
    """How large a gang is, which sequences it takes, and what each member reserves."""

    size: int
    min_frames: int
    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)

    def bundle(self) -> dict[str, float]:
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}


def plan_gang(
    spec: JobSpec, nodes: list[dict[str, float]], pool: ActorPlan, fixed_size: bool = False
) -> GangPlan | None:
    """The gang for this run's long sequences, or None when every sequence runs on one actor.

    `engine.frame_parallel: auto` is the GPUs the job's actors get on one node (at most 8; 1, no
    gang, on CPUs, with fractional GPUs per actor, or when the spec needs one process per sequence:
    the offline or streaming engine, a non-TTT model). An explicit G > 1 must fit one node of `nodes` (the
    alive nodes' resources): on a cluster that cannot grow (`fixed_size`) it is a SpecError."""
    res, wanted = spec.resources, spec.engine.frame_parallel
    if wanted == "auto":
        one_process = spec.engine.mode in ("offline", "streaming") or spec.model.config().global_block != "ttt"
        if not pool.uses_gpu or pool.num_gpus < 1 or one_process:
            return None
        most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
        size = min(MAX_FRAME_PARALLEL, pool.num_actors, int(most_gpus // pool.num_gpus))
    else:
        size = wanted
    if size <= 1:
        return None
    if pool.uses_gpu and pool.num_gpus < 1:
        raise SpecError(
            f"engine.frame_parallel={size}: each gang member needs a whole GPU (NCCL), "
            f"but resources.gpus_per_actor={pool.num_gpus:g}"
        )
    # every member needs a frame (an explicit G above gang_min_frames is a spec error; auto's is not)
    plan = GangPlan(size, max(size, res.gang_min_frames), pool.num_cpus, pool.num_gpus, dict(pool.resources))
    need = {k: size * v for k, v in plan.bundle().items() if v}
    cpus = sum(node.get("CPU", 0.0) for node in nodes)
    problem = None
    if not any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        problem = (
            f"engine.frame_parallel={size}: a gang needs {_text(need)} on one node; the largest node has "
            f"{_text({k: largest.get(k, 0.0) for k in need})}"
        )
    elif size * plan.num_cpus + res.decode_cpus > cpus:  # the gang's sequences must still be decoded
        problem = (
            f"engine.frame_parallel={size}: a gang of {size} x {plan.num_cpus:g} CPUs (resources.cpus_per_actor) "
            f"leaves less than resources.decode_cpus={res.decode_cpus:g} of the cluster's {cpus:g} CPUs for decoding"
        )
    if problem and fixed_size:
        raise SpecError(f"{problem}; lower engine.frame_parallel or resources.cpus_per_actor")
    if problem:
        logger.warning("%s: the gang waits until the cluster grows", problem)
    return plan


def route(table: SequenceTable, plan: GangPlan | None) -> int:
    """Send the pending sequences with at least `plan.min_frames` known frames to the gang lane;
    returns how many."""
    if plan is None:
        return 0
    long = set()
    for record in table.records():
        frames = table.expected_frames(record.sequence_id)
        if record.status == "pending" and frames is not None and frames >= plan.min_frames:
            long.add(record.sequence_id)
    table.send_to_gang(long)
    return len(long)


class AttemptHost(Protocol):
    """What the gang phase needs from the coordinator: the same attempt rules as the pool's."""

    def begin(self, sid: str, **where: Any) -> RunningAttempt: ...
    def commit(self, sid: str, attempt: RunningAttempt, result: Any) -> None: ...
    def failed(self, sid: str, attempt: RunningAttempt, exc: BaseException) -> None: ...
    def tick(self) -> None: ...


class GangPhase:
    """Runs the table's gang lane to the end: one sequence at a time on one gang, rebuilt after a
    member fails."""

    def __init__(
        self,
        spec: JobSpec,
        plan: GangPlan,
        table: SequenceTable,
        sources: dict[str, SequenceSource],
        executor: Executor,
        host: AttemptHost,
    ):
        self._spec, self._plan, self._table = spec, plan, table
        self._sources, self._executor, self._host = sources, executor, host
        self._gang: Gang | None = None
        self._start_failures = 0

    def run(self) -> None:
        try:
            while self._table.unfinished_in(GANG):
                self._host.tick()
                if self._gang is None:
                    self._gang = self._start()  # None if it died while starting: the next try
                    continue
                now = time.monotonic()
                sid = self._table.pop_runnable(now, GANG)
                if sid is None:
                    due = self._table.next_retry_at(GANG)
                    time.sleep(max(0.05, min(POLL_S, due - now)) if due is not None else POLL_S)
                    continue
                self._run(sid)
        finally:
            self._shutdown()

    def _start(self) -> Gang | None:
        plan = self._plan
        try:
            gang = Gang(
                self._spec, plan.size, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, resources=plan.resources,
                timeout_s=self._spec.resources.actor_start_timeout_s,
                collective_timeout_s=self._spec.resources.progress_timeout_s,
            )
        except TimeoutError as exc:
            raise InfrastructureError(f"{exc} (resources.actor_start_timeout_s)") from exc
        except RayError as exc:
            if classify(exc) == "init":
                raise InfrastructureError(describe(exc)) from exc
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise InfrastructureError(f"gangs keep dying while starting: {describe(exc)}") from exc
            log_event(logger, "gang_died_starting", logging.WARNING, size=plan.size, error=describe(exc))
            return None
        self._start_failures = 0
        members = ",".join(
            f"{m['host']}:{m['pid']}:{m.get('device', '?')}{''.join(f':gpu{g}' for g in m.get('gpus', []))}"
            for m in gang.info
        )
        log_event(logger, "gang_ready", size=plan.size, members=members)
        return gang

    def _run(self, sid: str) -> None:
        attempt = self._host.begin(sid, gang=self._plan.size)
        decoded = self._executor.decode(self._sources[sid])
        first, refs = self._gang.submit(self._sources[sid], decoded, attempt.attempt_id)
        try:
            self._wait(refs)
            result = self._executor.get(first)
        except Exception as exc:
            if classify(exc) != "input":  # a member failed: the others may wait in a collective
                log_event(logger, "gang_lost", logging.WARNING, size=self._plan.size, sequence_id=sid)
                self._shutdown()
            self._executor.cancel(decoded)
            self._host.failed(sid, attempt, exc)
            return
        self._host.commit(sid, attempt, result)

    def _wait(self, refs: list[Any]) -> None:
        """Until every member is done; the first failure is raised at once."""
        pending = list(refs)
        while pending:
            for ref in self._executor.wait(pending, POLL_S):
                pending.remove(ref)
                self._executor.get(ref)
            self._host.tick()

    def _shutdown(self) -> None:
        if self._gang is not None:
            self._gang.shutdown()
            self._gang = None


def _text(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())) + "}"
