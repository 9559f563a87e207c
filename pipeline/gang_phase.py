"""Long sequences on gangs: which sequences go to a gang, how large it is, and the loop that runs them.

A sequence with at least `resources.gang_min_frames` frames (after sampling, known before decoding
for image folders) runs on a gang of G = `engine.frame_parallel` model actors (pipeline.gang), one
sequence over their G devices; every other sequence runs on the pool of single actors. The
devices are held by the pool's actors, so a run goes in two phases: first the pool runs the short
sequences (retries included), then it is shut down, releasing its devices, and `count` gangs
(floor(devices / G): 4 gangs of 2 on 8 GPUs) run the long sequences at once, each taking the next
one as it becomes free. Both phases never compete for a device, a run without long sequences
never starts a gang, and a gang's start-up (G model loads, a process group) is paid once per run,
not per sequence. Short sequences first: they are the many, so the run's progress and
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

import itertools
import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field, replace
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
    count: int = 1  # gangs that run at once, each its own sequence

    def bundle(self) -> dict[str, float]:
        return {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}


def plan_gang(
    spec: JobSpec, nodes: list[dict[str, float]], pool: ActorPlan, fixed_size: bool = False
) -> GangPlan | None:
    """The gangs for this run's long sequences, or None when every sequence runs on one actor.

    `count` gangs run at once: floor(the job's actors / G) (on GPUs: its devices / G), as far as
    they fit on the nodes (each gang on one node).

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
    on_nodes = sum(min(int(node.get(k, 0.0) / v + 1e-9) for k, v in need.items()) for node in nodes)
    problem = None
    if not on_nodes:
        largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)), default={})
        problem = (
            f"engine.frame_parallel={size}: a gang needs {_text(need)} on one node; the largest node has "
            f"{_text({k: largest.get(k, 0.0) for k in need})}"
        )
    elif size * plan.num_cpus + pool.decode_cpus > cpus:  # the gang's sequences must still be decoded
        problem = (
            f"engine.frame_parallel={size}: a gang of {size} x {plan.num_cpus:g} CPUs (resources.cpus_per_actor) "
            f"leaves less than resources.decode_cpus={pool.decode_cpus:g} of the cluster's {cpus:g} CPUs for decoding"
        )
    if problem and fixed_size:
        raise SpecError(f"{problem}; lower engine.frame_parallel or resources.cpus_per_actor")
    if problem:
        logger.warning("%s: the gang waits until the cluster grows", problem)
        return plan
    # as many gangs as the job's actors make (its devices: plan_actors left CPUs for decoding) and fit on nodes
    return replace(plan, count=max(1, min(pool.num_actors // size, on_nodes)))


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


@dataclass
class _Slot:
    """One of the phase's concurrent gangs (None between a lost gang and its successor), the
    attempt it runs, and the refs of that attempt still outstanding."""

    gang: Gang | None = None
    gang_id: int = 0
    starting: Future | None = None
    sid: str | None = None
    attempt: RunningAttempt | None = None
    decoded: Any = None
    first: Any = None
    pending: list[Any] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return self.gang is not None and self.sid is None


class GangPhase:
    """Runs the table's gang lane to the end on up to `plan.count` gangs at once, each taking the
    next sequence as it becomes free; a gang whose member failed is shut down and rebuilt.

    One loop on the driver's thread: gangs start in background threads (a start blocks while
    their models load), every other call is non-blocking, and the attempts' rules stay the host's."""

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
        self._slots: list[_Slot] = []
        self._room = plan.count  # gangs the cluster holds (fewer if one finds no room)
        self._starter = ThreadPoolExecutor(plan.count, thread_name_prefix="gang-start")
        self._cancel = threading.Event()  # calls off the gangs still starting when the phase ends
        self._serial = itertools.count(1)
        self._start_failures = 0

    def run(self) -> None:
        try:
            while self._table.unfinished_in(GANG):
                self._host.tick()
                self._start_gangs()
                self._dispatch()
                self._poll()
        finally:
            self._shutdown()

    def _start_gangs(self) -> None:
        """Gangs for the lane's unfinished sequences, up to the plan's count; then those started."""
        wanted = min(self._room, self._table.unfinished_in(GANG))
        self._slots = [s for s in self._slots if s.gang or s.starting]
        while len(self._slots) < wanted:
            self._slots.append(_Slot(starting=self._starter.submit(self._new_gang)))
        for slot in self._slots:
            if slot.starting is not None and slot.starting.done():
                future, slot.starting = slot.starting, None
                self._started(slot, future)

    def _new_gang(self) -> Gang:
        plan, res = self._plan, self._spec.resources
        return Gang(
            self._spec, plan.size, num_cpus=plan.num_cpus, num_gpus=plan.num_gpus, resources=plan.resources,
            timeout_s=res.actor_start_timeout_s, collective_timeout_s=res.progress_timeout_s, cancel=self._cancel,
            on_no_room=self._no_room, keep_waiting=self._gangs_up,
        )

    def _gangs_up(self) -> int:
        """Gangs started and not lost (read from a starting gang's thread: a start waits for room,
        without a deadline, as long as one of them runs the lane's sequences)."""
        return sum(slot.gang is not None for slot in list(self._slots))

    def _no_room(self) -> None:
        """A gang's placement group found no room: say what happens meanwhile."""
        up = self._gangs_up()
        then = "the gangs up take the long sequences meanwhile" if up else "up to resources.actor_start_timeout_s"
        log_event(
            logger, "gang_no_room", logging.WARNING, size=self._plan.size, gangs_up=up,
            message=f"gang_no_room size={self._plan.size} gangs_up={up}: a gang waits for room; {then}",
        )

    def _started(self, slot: _Slot, future: Future) -> None:
        plan = self._plan
        try:
            gang = future.result()
        except TimeoutError as exc:
            if any(s.gang or s.starting for s in self._slots if s is not slot):  # run on the gangs there are
                self._room -= 1
                log_event(logger, "gang_dropped", logging.WARNING, size=plan.size, gangs=self._room, error=str(exc))
                return
            raise InfrastructureError(f"{exc} (resources.actor_start_timeout_s)") from exc
        except RayError as exc:
            if classify(exc) == "init":
                raise InfrastructureError(describe(exc)) from exc
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                raise InfrastructureError(f"gangs keep dying while starting: {describe(exc)}") from exc
            log_event(logger, "gang_died_starting", logging.WARNING, size=plan.size, error=describe(exc))
            return  # the slot is dropped; the next round starts another
        self._start_failures = 0
        slot.gang, slot.gang_id = gang, next(self._serial)
        members = ",".join(
            f"{m['host']}:{m['pid']}:{m.get('device', '?')}{''.join(f':gpu{g}' for g in m.get('gpus', []))}"
            for m in gang.info
        )
        log_event(logger, "gang_ready", gang_id=slot.gang_id, size=plan.size, members=members)

    def _dispatch(self) -> None:
        """Every idle gang takes the lane's next runnable sequence."""
        for slot in self._slots:
            if not slot.idle:
                continue
            sid = self._table.pop_runnable(time.monotonic(), GANG)
            if sid is None:
                return
            slot.sid, slot.attempt = sid, self._host.begin(sid, gang=self._plan.size, gang_id=slot.gang_id)
            slot.decoded = self._executor.decode(self._sources[sid])
            slot.first, refs = slot.gang.submit(self._sources[sid], slot.decoded, slot.attempt.attempt_id)
            slot.pending = list(refs)

    def _poll(self) -> None:
        """Waits up to POLL_S for the running attempts (or, with none, a starting gang or a retry's
        backoff), then commits each finished attempt and fails each failed one at once."""
        refs = {ref: slot for slot in self._slots for ref in slot.pending}
        if not refs:
            starting = [s.starting for s in self._slots if s.starting is not None]
            if starting:
                futures_wait(starting, POLL_S, return_when=FIRST_COMPLETED)
            else:
                due = self._table.next_retry_at(GANG)
                now = time.monotonic()
                time.sleep(max(0.05, min(POLL_S, due - now)) if due is not None else POLL_S)
            return
        for ref in self._executor.wait(list(refs), POLL_S):
            slot = refs[ref]
            if ref not in slot.pending:  # its attempt already failed
                continue
            slot.pending.remove(ref)
            try:
                self._executor.get(ref)
            except Exception as exc:
                self._fail(slot, exc)
                continue
            if not slot.pending:
                sid, attempt, result = slot.sid, slot.attempt, self._executor.get(slot.first)
                result.worker["gang_id"] = slot.gang_id  # which of the run's gangs wrote it (commit marker)
                self._clear(slot)
                self._host.commit(sid, attempt, result)

    def _fail(self, slot: _Slot, exc: BaseException) -> None:
        sid, attempt = slot.sid, slot.attempt
        if classify(exc) != "input":  # a member failed: the others may wait in a collective
            log_event(logger, "gang_lost", logging.WARNING, gang_id=slot.gang_id, size=self._plan.size, sequence_id=sid)
            slot.gang.shutdown()
            slot.gang = None  # the slot is dropped; the next round starts another gang
        self._executor.cancel(slot.decoded)
        self._clear(slot)
        self._host.failed(sid, attempt, exc)

    @staticmethod
    def _clear(slot: _Slot) -> None:
        slot.sid = slot.attempt = slot.decoded = slot.first = None
        slot.pending = []

    def _shutdown(self) -> None:
        self._cancel.set()  # a gang still starting stops within a second, leaving nothing behind
        if waiting := sum(slot.starting is not None for slot in self._slots):
            log_event(logger, "gang_called_off", gangs=waiting, message=f"gang_called_off gangs={waiting}: "
                      "the gang phase ends; gangs still starting (or waiting for room) are called off")
        for slot in self._slots:
            if slot.gang is not None:
                slot.gang.shutdown()
            if slot.starting is not None:  # unless it has just started: then it is shut down here
                slot.starting.add_done_callback(_shutdown_started)
        self._slots = []
        self._starter.shutdown(wait=True)


def _shutdown_started(future: Future) -> None:
    if future.exception() is None:
        future.result().shutdown()


def _text(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())) + "}"
