"""The driver's loop: which sequence runs where, what happens when something fails, when to stop.

Every sequence moves pending -> running -> done | failed. Bad input fails at once; anything
else is retried with exponential backoff up to `retry.max_attempts` (per driver session), on a
fresh actor if the old one died. A run can always be continued: commit markers say what is
done, the manifest says what failed for good, and everything else simply runs again.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from .actors import check_checkpoint
from .cluster import connect
from .commit import Committer, discard_attempt
from .commit_record import read_commits
from .discovery import SequenceSource, discover
from .errors import InfrastructureError, PipelineError, SpecError, storage_error
from .execution import RayExecutor, classify, describe, plan_actors
from .layout import RunLayout
from .manifest import RunSummary, SequenceRecord
from .redaction import get_logger, redact_uri
from .spec import JobSpec
from .storage import Store

logger = get_logger(__name__)

MANIFEST_INTERVAL_S = 10.0  # how often the manifest is rewritten while the run goes on
POLL_S = 1.0


@dataclass
class _Slot:
    """A place for one model actor; the actor in it is replaced when it dies."""

    actor: Any = None
    ready_ref: Any = None
    ready: bool = False
    inflight: set = field(default_factory=set)  # process refs running on the current actor


@dataclass
class _Attempt:
    sequence_id: str
    attempt_id: str
    slot: _Slot
    actor: Any
    decode_ref: Any
    started: float


class Coordinator:
    """Runs one job to completion (or until an infrastructure error stops it)."""

    def __init__(
        self, spec: JobSpec, *, progress: bool = True, retry_failed: bool = False, ray_address: str | None = None
    ):
        if spec.run_id is None:
            spec = spec.with_run_id()
        self.spec = spec
        self.layout = RunLayout(spec.run_uri)
        self.store = Store(spec.run_uri, spec.storage)
        self._committer = Committer(self.store, self.layout)
        self._show_progress = progress
        self._retry_failed = retry_failed
        self._ray_address = ray_address
        self._records: dict[str, SequenceRecord] = {}
        self._sources: dict[str, SequenceSource] = {}
        self._session_attempts: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._attempts: dict[Any, _Attempt] = {}
        self._slots: list[_Slot] = []
        self._executor: RayExecutor | None = None
        self._bar: tqdm | None = None
        self._frames_done = 0
        self._startup_failures = 0
        self._last_manifest = 0.0

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run every sequence not yet done; the summary is also stored, even if the run stops early."""
        start = time.monotonic()
        self._prepare()  # before Ray: a bad input or store fails fast, a finished run needs no cluster
        started_ray = False
        try:
            if self._pending_ids():
                started_ray = connect(self._ray_address, self.spec.resources.ray_connect_timeout_s)
                self._start_executor(fixed_size=started_ray)  # a cluster we started cannot grow
                self._loop()
        finally:
            self._stop()
            if started_ray:
                import ray

                ray.shutdown()
            summary = RunSummary.from_records(
                self.spec.run_id,
                self.spec.run_uri,
                list(self._records.values()),
                time.monotonic() - start,
                self._frames_done,
            )
            self._write_manifest()
            try:
                self.store.write_json(self.layout.summary, summary.model_dump(mode="json"))
            except Exception as exc:  # do not mask the error that stopped the run
                logger.warning("could not write %s: %s", self.layout.summary, exc)
        return summary

    def _prepare(self) -> None:
        """Find the sequences, store the spec, restore what earlier sessions already did."""
        try:
            self._check_same_results()
            commits = read_commits(self.store, self.layout, verify=True)
            known = {r.sequence_id: r.source_uri for r in commits.manifest.values() if r.source_uri}
            known.update({sid: r.source_uri for sid, r in commits.committed.items() if r.source_uri})
            sources = self._discover(bool(commits.committed), known)
            if any(s.sequence_id not in commits.committed for s in sources):
                check_checkpoint(self.spec)  # before the run folder or a cluster exists
            self.store.write_bytes(self.layout.spec, self.spec.to_json().encode())
            self._committer.recover(commits)  # torn sequences withdrawn, uncommitted outputs removed
        except PipelineError:
            raise
        except Exception as exc:  # OSError, or a store client's own errors (e.g. unreachable endpoint)
            raise storage_error(exc, self.spec.run_uri, endpoint_url=self.spec.storage.endpoint_url) from exc
        self._sources = {s.sequence_id: s for s in sources}
        self._records.update(commits.committed)
        previous = commits.manifest
        for source in sources:
            sid = source.sequence_id
            if sid in self._records:
                continue
            before = previous.get(sid)
            if before is not None and before.status == "failed" and not self._retry_failed:
                self._records[sid] = before
                continue
            self._records[sid] = SequenceRecord(
                sequence_id=sid,
                source_uri=source.uri,
                num_frames=source.num_frames,
                attempts=before.attempts if before else 0,
            )
        logger.info(
            "run %s: %d sequences, %d already done, %d to do",
            self.spec.run_id,
            len(self._records),
            len(commits.committed),
            len(self._pending_ids()),
        )

    def _check_same_results(self) -> None:
        """Refuse to continue a run with a spec that would produce different outputs."""
        try:
            stored = JobSpec.model_validate(self.store.read_json(self.layout.spec))
        except FileNotFoundError:
            return
        except (ValueError, ValidationError) as exc:
            raise SpecError(f"{self.layout.spec} is not a valid job spec: {exc}") from None
        before, now = stored.result_fields(), self.spec.result_fields()
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if changed:
            raise SpecError(
                f"run {self.spec.run_id} was started with different {', '.join(changed)} settings; "
                "its committed outputs would not match: use a new run_id"
            )

    def _discover(self, resuming: bool, known: dict[str, str]) -> list[SequenceSource]:
        """The input's sequences; an empty input is a spec error unless the run has results."""
        try:
            sources = discover(self.spec, known=known)
        except SpecError as exc:
            if not resuming:
                raise
            logger.warning("input unavailable (%s); keeping the run's committed sequences", exc)
            return []
        if not sources and not resuming:
            where = self.spec.input.prefix or self.spec.input.manifest
            raise SpecError(f"no sequences found in {redact_uri(where)} (sub-folders of images, or video files)")
        return sources

    def _start_executor(self, fixed_size: bool) -> None:
        import ray

        plan = plan_actors(self.spec, ray.cluster_resources(), fixed_size)
        logger.info("starting %d model actor(s) (gpus=%s cpus=%s each)", plan.num_actors, plan.num_gpus, plan.num_cpus)
        self._executor = RayExecutor(self.spec, plan)
        self._slots = [_Slot() for _ in range(plan.num_actors)]
        for slot in self._slots:
            self._start_actor(slot)
        todo = [self._records[sid] for sid in self._pending_ids()]
        self._bar = tqdm(
            total=sum(r.num_frames or 0 for r in todo),
            unit="frame",
            desc=f"run {self.spec.run_id}",
            disable=not self._show_progress,
            dynamic_ncols=True,
        )
        self._startup_deadline = time.monotonic() + self.spec.resources.actor_start_timeout_s

    def _loop(self) -> None:
        while self._unfinished():
            self._dispatch()
            refs = list(self._attempts) + [s.ready_ref for s in self._slots if s.ready_ref is not None]
            timeout = self._wait_timeout()
            if refs:
                for ref in self._executor.wait(refs, timeout):
                    self._handle(ref)
            else:
                time.sleep(timeout)
            self._check_startup_deadline()
            if time.monotonic() - self._last_manifest > MANIFEST_INTERVAL_S:
                self._write_manifest()

    def _unfinished(self) -> bool:
        return any(r.status in ("pending", "running") for r in self._records.values())

    def _pending_ids(self) -> list[str]:
        return [sid for sid, r in sorted(self._records.items()) if r.status == "pending"]

    # -- dispatching -------------------------------------------------------------------------

    def _dispatch(self) -> None:
        now = time.monotonic()
        limit = self.spec.resources.max_in_flight_per_actor
        for sid in self._pending_ids():
            if self._not_before.get(sid, 0.0) > now:
                continue
            free = [s for s in self._slots if s.ready and len(s.inflight) < limit]
            if not free:
                return
            slot = min(free, key=lambda s: len(s.inflight))
            record = self._records[sid]
            attempt_id = uuid.uuid4().hex[:12]
            record.status, record.attempts = "running", record.attempts + 1
            self._session_attempts[sid] = self._session_attempts.get(sid, 0) + 1
            decode_ref, ref = self._executor.submit(slot.actor, self._sources[sid], attempt_id)
            slot.inflight.add(ref)
            self._attempts[ref] = _Attempt(sid, attempt_id, slot, slot.actor, decode_ref, time.monotonic())
            self._update_bar()

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        waits = [t - now for sid, t in self._not_before.items() if self._records[sid].status == "pending"]
        return max(0.05, min([POLL_S, *waits]))

    # -- results -----------------------------------------------------------------------------

    def _handle(self, ref: Any) -> None:
        attempt = self._attempts.pop(ref, None)
        if attempt is None:
            self._handle_ready(ref)
            return
        attempt.slot.inflight.discard(ref)
        try:
            result = self._executor.get(ref)
        except Exception as exc:
            kind = classify(exc)
            if kind == "init":
                raise InfrastructureError(describe(exc)) from exc
            if kind == "actor_lost" and attempt.slot.actor is attempt.actor:
                logger.warning("model actor lost while running %s; starting a new one", attempt.sequence_id)
                self._start_actor(attempt.slot)
            discard_attempt(self.store, self.layout, attempt.sequence_id, attempt.attempt_id)
            self._attempt_failed(attempt.sequence_id, kind, describe(exc))
            return
        self._commit(attempt, result)

    def _commit(self, attempt: _Attempt, result: Any) -> None:
        record = self._records[attempt.sequence_id]
        timings = {**result.timings, "total_s": time.monotonic() - attempt.started}
        try:
            marker = self._committer.commit(
                attempt.sequence_id,
                attempt.attempt_id,
                result.staged,
                {
                    "source_uri": record.source_uri,
                    "attempt": record.attempts,
                    "worker": result.worker,
                    "timings": timings,
                },
            )
        except Exception as exc:  # the store failed us: the whole attempt is retried
            discard_attempt(self.store, self.layout, attempt.sequence_id, attempt.attempt_id)
            self._attempt_failed(attempt.sequence_id, "transient", f"commit failed: {describe(exc)}")
            return
        done = SequenceRecord.from_marker(marker)
        self._records[attempt.sequence_id] = done
        self._frames_done += done.num_frames or 0
        if self._bar is not None:
            if record.num_frames is None:  # a video: its length is known only now
                self._bar.total += done.num_frames or 0
            self._bar.update(done.num_frames or 0)
        self._update_bar()

    def _attempt_failed(self, sid: str, kind: str, error: str) -> None:
        record = self._records[sid]
        record.error, record.error_kind = error, kind
        retry = self.spec.retry
        if kind == "input" or self._session_attempts.get(sid, 0) >= retry.max_attempts:
            record.status = "failed"
            logger.error("sequence %s failed (%s): %s", sid, kind, error)
            if self._bar is not None and record.num_frames:
                self._bar.total -= record.num_frames
        else:
            record.status = "pending"
            delay = retry.delay(self._session_attempts[sid])
            self._not_before[sid] = time.monotonic() + delay
            logger.warning(
                "sequence %s attempt %d failed (%s), retrying in %.1fs: %s", sid, record.attempts, kind, delay, error
            )
        self._update_bar()

    # -- actors ------------------------------------------------------------------------------

    def _start_actor(self, slot: _Slot) -> None:
        if slot.actor is not None:
            self._executor.kill(slot.actor)
        slot.actor, slot.ready_ref = self._executor.start_actor()
        slot.ready, slot.inflight = False, set()

    def _handle_ready(self, ref: Any) -> None:
        slot = next((s for s in self._slots if s.ready_ref is ref), None)
        if slot is None:
            return
        slot.ready_ref = None
        try:
            info = self._executor.get(ref)
        except Exception as exc:
            if classify(exc) == "init":
                raise InfrastructureError(describe(exc)) from exc
            self._startup_failures += 1
            if self._startup_failures > max(3, 2 * len(self._slots)):
                raise InfrastructureError(f"model actors keep dying while starting: {describe(exc)}") from exc
            logger.warning("model actor died while starting (%s); starting another", describe(exc))
            self._start_actor(slot)
            return
        slot.ready = True
        self._startup_failures = 0
        logger.info("model actor ready: %s", info)

    def _check_startup_deadline(self) -> None:
        if any(s.ready for s in self._slots) or time.monotonic() < self._startup_deadline:
            return
        raise InfrastructureError(
            f"no model actor started within {self.spec.resources.actor_start_timeout_s:.0f}s; "
            "does the cluster have the resources one actor asks for?"
        )

    # -- bookkeeping -------------------------------------------------------------------------

    def _update_bar(self) -> None:
        if self._bar is None:
            return
        counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
        for r in self._records.values():
            counts[r.status] += 1
        self._bar.set_postfix(counts, refresh=False)
        self._bar.refresh()

    def _write_manifest(self) -> None:
        if not self._records:
            return
        try:
            self._committer.compact(list(self._records.values()))  # the manifest is the compact commit record
            self._last_manifest = time.monotonic()
        except Exception as exc:  # the next write (or the commit markers) will catch up
            logger.warning("could not write the manifest: %s", exc)

    def _stop(self) -> None:
        """Cancel what is still in flight and release the actors (and their GPUs)."""
        if self._executor is not None:
            for slot in self._slots:
                if slot.actor is not None:
                    self._executor.kill(slot.actor)
            for attempt in self._attempts.values():
                self._executor.cancel(attempt.decode_ref)
            try:  # nothing runs any more, so no staged file can still be needed
                self.store.delete(self.layout.staging_root)
            except Exception as exc:
                logger.warning("could not clean up %s: %s", self.layout.staging_root, exc)
        for record in self._records.values():
            if record.status == "running":
                record.status = "pending"
        if self._bar is not None:
            self._bar.close()
