"""The driver's loop: which sequence runs where, what happens when something fails, when to stop.

Every sequence moves pending -> running -> done | failed. Bad input fails at once; anything
else is retried with exponential backoff up to `retry.max_attempts` (per driver session), on a
fresh actor if the old one died. A run can always be continued: commit markers say what is
done, the manifest says what failed for good, and everything else simply runs again. Only one
driver works on a run at a time (pipeline.lease); the state of every sequence lives in a
`SequenceTable`, the actors in an `ActorPool`, and what people see in `ProgressReport` and the
event log (pipeline.logs). Long sequences run after the pool's, on a gang of actors
(pipeline.gang_phase), under the same attempt rules (`begin`, `commit`, `failed`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from .actor_pool import ActorPool, Slot
from .actors import check_checkpoint
from .commit import Committer, discard_attempt
from .commit_record import Commits
from .discovery import Discovery, SequenceSource
from .errors import InfrastructureError, PipelineError, storage_error
from .execution import Executor, cause_of, classify, describe, ray_executor
from .gang_phase import GangPhase, route
from .layout import RunLayout
from .lease import Lease, LeaseLostError, RunLease, iso_time
from .logs import log_event
from .manifest import RunSummary, SequenceRecord
from .progress import ProgressReport
from .redaction import get_logger
from .report.html import report_at_end
from .restore import check_same_results, find_sources, previous_elapsed, read_previous, restore_table
from .sequence_table import GANG, POOL, RunningAttempt, SequenceTable
from .spec import JobSpec
from .storage import Store

logger = get_logger(__name__)

MANIFEST_INTERVAL_S = 10.0  # the manifest is rewritten at most this often while the run goes on ...
MANIFEST_SHARE = 0.1  # ... and so that rewriting it takes at most this share of the driver's time
PUBLISH_S = 0.5  # how often the loop hands the heartbeat fresh progress
POLL_S = 1.0

ExecutorFactory = Callable[[JobSpec], AbstractContextManager[Executor]]


@dataclass
class _Attempt:
    """An attempt on the pool: which actor runs it (a replaced actor's failures are not its own)."""

    sequence_id: str
    running: RunningAttempt
    slot: Slot
    actor: Any
    decode_ref: Any


class Coordinator:
    """Runs one job to completion (or until an infrastructure error stops it).

    `executor` opens the cluster the work runs on; by default Ray (`ray_address`, or local).
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        progress: bool = True,
        retry_failed: bool = False,
        ray_address: str | None = None,
        executor: ExecutorFactory | None = None,
    ):
        if spec.run_id is None:
            spec = spec.with_run_id()
        self.spec = spec
        self.layout = RunLayout(spec.run_uri)
        self.store = Store(spec.run_uri, spec.storage)
        self._committer = Committer(self.store, self.layout)
        self._show_progress = progress
        self._retry_failed = retry_failed
        self._open_executor = executor or (lambda s: ray_executor(s, ray_address))
        self._table = SequenceTable()
        self._sources: dict[str, SequenceSource] = {}
        self._skipped_inputs: dict[str, int] = {}  # discovery's skip counts by reason
        self._attempts: dict[Any, _Attempt] = {}
        self._on_gang: dict[str, dict] = {}  # running sequences on a gang: its size and id (for status)
        self._lease = RunLease(self.store, self.layout, spec.driver, spec.run_id)
        self._progress = ProgressReport(spec.run_id, self._table, enabled=False)
        self._executor: Executor | None = None
        self._pool: ActorPool | None = None
        self._elapsed_before = 0.0  # working time of earlier sessions of this run
        self._worked_since: float | None = None  # when this session started working, if it had work
        self._stale_record = False  # the manifest and summary miss what an earlier session did or left
        self._last_event = time.monotonic()
        self._next_manifest = 0.0
        self._next_publish = 0.0

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run every sequence not yet done; the summary is also stored, even if the run stops early."""
        try:  # before the lease, only reads: bad input, checkpoints and stores fail without writing
            self._lease.refuse_if_held()  # before discovery, which may take minutes on a large input
            check_same_results(self.store, self.layout, self.spec)
            previous = read_previous(self.store, self.layout)
            found = find_sources(self.spec, previous)
            if any(s.sequence_id not in previous.committed for s in found.sources):
                check_checkpoint(self.spec)  # before a run folder or a cluster exists
            last_lease = self._lease.acquire()
        except PipelineError:
            raise
        except Exception as exc:  # OSError, or a store client's own errors (e.g. unreachable endpoint)
            raise self._storage_error(exc) from exc
        try:
            self._restore(found, previous, last_lease)
            if self._table.unfinished:
                self._worked_since = time.monotonic()
                with self._open_executor(self.spec) as executor:
                    self._work(executor)
        except LeaseLostError:
            self._lease.release({})  # only stops the heartbeat: another driver owns the run now
            raise
        except BaseException:
            self._finish()
            raise
        return self._finish()

    def _restore(self, found: Discovery, previous: Commits, last_lease: Lease | None) -> None:
        try:
            self._table = restore_table(
                self._committer, self.spec, found.sources, previous, retry_failed=self._retry_failed
            )
            self._elapsed_before = previous_elapsed(self.store, self.layout, last_lease)
        except PipelineError:
            raise
        except Exception as exc:
            raise self._storage_error(exc) from exc
        self._stale_record = bool(previous.intents or previous.torn or previous.orphans) or (
            last_lease is not None and last_lease.state == "running"  # its driver died before its summary
        )
        self._sources = {s.sequence_id: s for s in found.sources}
        self._skipped_inputs = found.skipped_counts()
        self._progress = ProgressReport(
            self.spec.run_id, self._table, enabled=self._show_progress, interval_s=self.spec.driver.progress_interval_s
        )
        counts = self._table.counts
        log_event(
            logger, "run_start", run_id=self.spec.run_id, sequences=len(self._table), done=counts["done"],
            failed=counts["failed"], todo=counts["pending"], frames_todo=self._table.frames_todo,
            frames_unknown_sequences=self._table.unknown_todo,
        )
        self._lease.publish(self._live_progress())

    def _finish(self) -> RunSummary:
        """Store the manifest and summary (unless this session found them complete and changed
        nothing: `resume` of a finished run) and release the lease."""
        elapsed = self._elapsed()
        summary = RunSummary.from_records(
            self.spec.run_id, self.spec.run_uri, self._table.records(), elapsed, self._table.frames_done,
            skipped_inputs=self._skipped_inputs,
        )
        changed = self._worked_since is not None or self._stale_record
        if len(self._table) and (changed or not self._summary_exists()):
            self._write_manifest()
            try:
                self.store.write_json(self.layout.summary, summary.model_dump(mode="json"))
            except Exception as exc:  # do not mask the error that stopped the run
                logger.warning("could not write %s: %s", self.layout.summary, exc)
            report_at_end(self.spec)  # while the lease is held: report.html is the run's too
        self._lease.release(self._live_progress(elapsed))
        log_event(
            logger, "run_end", run_id=self.spec.run_id, status=summary.status, done=summary.done,
            failed=summary.failed, pending=summary.pending, elapsed_s=summary.elapsed_s,
        )
        return summary

    # -- the loop ----------------------------------------------------------------------------

    def _work(self, executor: Executor) -> None:
        """The pool's sequences, then (their devices released) the gangs': pipeline.gang_phase."""
        self._executor = executor
        gangs = executor.gang_plan
        if route(self._table, gangs):
            log_event(
                logger, "gang_route", sequences=self._table.unfinished_in(GANG), size=gangs.size,
                gangs=gangs.count, min_frames=gangs.min_frames,
            )
        self._last_event = time.monotonic()
        try:
            if self._table.unfinished_in(POOL):
                self._run_pool()
            if self._pool is not None:
                self._pool.shutdown()  # its devices go to the gangs
            if self._table.unfinished_in(GANG):
                GangPhase(self.spec, gangs, self._table, self._sources, executor, self).run()
        finally:
            self._stop()

    def _run_pool(self) -> None:
        executor, resources = self._executor, self.spec.resources
        self._pool = ActorPool(executor, executor.plan.num_actors, start_timeout_s=resources.actor_start_timeout_s)
        while self._table.unfinished_in(POOL):
            self._lease.check()
            self._dispatch()
            refs = [*self._attempts, *self._pool.starting_refs]
            for ref in executor.wait(refs, self._wait_timeout()) if refs else []:
                self._handle(ref)
            if not refs:
                time.sleep(self._wait_timeout())
            self._pool.check_start_deadline()
            self._check_progress()
            self._periodic()

    def _dispatch(self) -> None:
        now = time.monotonic()
        limit = self.spec.resources.max_in_flight_per_actor
        while (slot := self._pool.least_loaded(limit)) is not None:
            sid = self._table.pop_runnable(now)
            if sid is None:
                return
            running = self.begin(sid, actor=slot.index)
            gangs = self._executor.gang_plan  # a length known only once decoded may send it to a gang
            hand_back = gangs.min_frames if gangs and self._table.expected_frames(sid) is None else None
            decode_ref, ref = self._executor.submit(slot.actor, self._sources[sid], running.attempt_id, hand_back)
            slot.inflight.add(ref)
            self._attempts[ref] = _Attempt(sid, running, slot, slot.actor, decode_ref)

    def _wait_timeout(self) -> float:
        due = self._table.next_retry_at()
        return max(0.05, min(POLL_S, due - time.monotonic())) if due is not None else POLL_S

    def _handle(self, ref: Any) -> None:
        attempt = self._attempts.pop(ref, None)
        if attempt is None:
            if self._pool.is_starting(ref):
                self._pool.started(ref)
                self._last_event = time.monotonic()
            return
        attempt.slot.inflight.discard(ref)
        try:
            result = self._executor.get(ref)
        except Exception as exc:
            if classify(exc) == "actor_lost" and attempt.slot.actor is attempt.actor:
                log_event(
                    logger, "actor_lost", logging.WARNING, actor=attempt.slot.index, sequence_id=attempt.sequence_id
                )
                self._pool.replace(attempt.slot)
            self.failed(attempt.sequence_id, attempt.running, exc)
            return
        self.commit(attempt.sequence_id, attempt.running, result)

    # -- one attempt, wherever it runs (the pool above, or pipeline.gang_phase) ---------------

    def begin(self, sid: str, **where: Any) -> RunningAttempt:
        """Start an attempt of `sid`; `where` (actor=i or gang=G) goes into its log line."""
        running = self._table.start(sid, uuid.uuid4().hex[:12], started_at=time.time(), started=time.monotonic())
        if "gang" in where:
            self._on_gang[sid] = {k: where[k] for k in ("gang", "gang_id") if k in where}
        log_event(logger, "sequence_start", sequence_id=sid, attempt=running.attempt, **where)
        return running

    def failed(self, sid: str, attempt: RunningAttempt, exc: BaseException) -> None:
        """The attempt raised: its staged files go, and the sequence is retried or fails."""
        kind = classify(exc)
        if kind == "init":
            raise InfrastructureError(describe(exc)) from exc
        self._on_gang.pop(sid, None)
        discard_attempt(self.store, self.layout, sid, attempt.attempt_id)
        if kind == "gang":
            frames = cause_of(exc).num_frames
            self._table.hand_to_gang(sid, frames)
            log_event(logger, "sequence_to_gang", sequence_id=sid, frames=frames)
            return
        self._attempt_failed(sid, kind, describe(exc))

    def tick(self) -> None:
        """Between events of a long wait: the lease, progress, the manifest."""
        self._lease.check()
        self._periodic()

    def commit(self, sid: str, attempt: RunningAttempt, result: Any) -> None:
        gang = self._on_gang.pop(sid, {})
        record = self._table[sid]
        timings = {**result.timings, "total_s": time.monotonic() - attempt.started}
        self._lease.check()  # never publish into a run that another driver has taken over
        try:
            marker = self._committer.commit(
                sid,
                attempt.attempt_id,
                result.staged,
                {
                    "source_uri": record.source_uri,
                    "attempt": record.attempts,
                    "worker": result.worker,
                    "engine": result.engine,
                    "timings": timings,
                },
            )
        except Exception as exc:  # the store failed us: the whole attempt is retried
            discard_attempt(self.store, self.layout, sid, attempt.attempt_id)
            self._attempt_failed(sid, "transient", f"commit failed: {describe(exc)}")
            return
        done = SequenceRecord.from_marker(marker)
        self._table.done(done)
        now = time.monotonic()
        self._last_event = now
        self._progress.committed(now)
        log_event(
            logger, "sequence_done", sequence_id=sid, attempt=done.attempts, frames=done.num_frames,
            seconds=done.total_s, **gang,
        )

    def _attempt_failed(self, sid: str, kind: str, error: str) -> None:
        self._last_event = time.monotonic()
        attempt = self._table[sid].attempts
        if kind == "input" or self._table.session_attempts(sid) >= self.spec.retry.max_attempts:
            self._table.fail(sid, kind, error)
            log_event(
                logger, "sequence_failed", logging.ERROR, sequence_id=sid, attempt=attempt, kind=kind, error=error
            )
            return
        delay = self.spec.retry.delay(self._table.session_attempts(sid))
        self._table.retry(sid, kind, error, time.monotonic() + delay)
        log_event(
            logger, "sequence_retry", logging.WARNING, sequence_id=sid, attempt=attempt, kind=kind,
            retry_in_s=round(delay, 3), error=error,
        )

    def _check_progress(self) -> None:
        """Stop a run that waits for something that will not come (resources.progress_timeout_s).
        While no actor is ready, resources.actor_start_timeout_s applies instead."""
        idle = time.monotonic() - self._last_event
        if idle <= self.spec.resources.progress_timeout_s or not any(s.ready for s in self._pool.slots):
            return
        counts = self._table.counts
        raise InfrastructureError(
            f"no progress for {idle:.0f}s (resources.progress_timeout_s): no sequence finished and no actor "
            f"started; {counts['running']} sequence(s) in flight, {counts['pending']} waiting, "
            f"{sum(s.ready for s in self._pool.slots)} of {len(self._pool.slots)} actor(s) ready; "
            f"{self._executor.describe_resources()}"
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _periodic(self) -> None:
        now = time.monotonic()
        self._progress.update(now)
        if now >= self._next_publish:
            self._lease.publish(self._live_progress())
            self._next_publish = now + PUBLISH_S
        if now >= self._next_manifest:
            self._write_manifest()
            took = time.monotonic() - now
            self._next_manifest = time.monotonic() + max(MANIFEST_INTERVAL_S, took / MANIFEST_SHARE)

    def _summary_exists(self) -> bool:
        try:
            return self.store.exists(self.layout.summary)
        except Exception:  # the store failed: try to write it
            return False

    def _elapsed(self) -> float:
        """Working time of the run over all its sessions."""
        session = time.monotonic() - self._worked_since if self._worked_since is not None else 0.0
        return self._elapsed_before + session

    def _live_progress(self, elapsed: float | None = None) -> dict[str, Any]:
        """What the heartbeat tells `status`: counts, frames, rate, and the sequences in flight."""
        running = sorted(self._table.running.items(), key=lambda item: item[1].started)
        return {
            **self._progress.facts(),
            "elapsed_s": self._elapsed() if elapsed is None else elapsed,
            "last_event_at": iso_time(time.time() - (time.monotonic() - self._last_event)),
            "skipped_inputs": self._skipped_inputs,
            "running_sequences": [
                {
                    "sequence_id": sid, "attempt": r.attempt, "started_at": iso_time(r.started_at),
                    **self._on_gang.get(sid, {}),
                }
                for sid, r in running
            ],
        }

    def _write_manifest(self) -> None:
        if not len(self._table):
            return
        try:
            self._committer.compact(self._table.records())  # the manifest is the compact commit record
        except Exception as exc:  # the next write (or the commit markers) will catch up
            logger.warning("could not write the manifest: %s", exc)

    def _stop(self) -> None:
        """Cancel what is still in flight and release the actors (and their GPUs)."""
        if self._pool is not None:
            self._pool.shutdown()
        for attempt in self._attempts.values():
            self._executor.cancel(attempt.decode_ref)
        if self._lease.held:  # nothing of ours runs any more, so no staged file can still be needed
            try:
                self.store.delete(self.layout.staging_root)
            except Exception as exc:
                logger.warning("could not clean up %s: %s", self.layout.staging_root, exc)
        self._table.stop()
        self._progress.close()

    def _storage_error(self, exc: Exception) -> InfrastructureError:
        return storage_error(exc, self.spec.run_uri, endpoint_url=self.spec.storage.endpoint_url)
