"""The driver's table of sequences: every record, and what the scheduling loop asks of them.

After every event the loop asks whether work is left, which sequence runs next, when a retry
is due and how many sequences are in each state. All of that is kept up to date as records
change, so an event costs the same at 100 sequences as at 100,000: counts per status, a queue
of runnable sequences in order, a heap of retries waiting out their backoff, the attempts in
flight, and frame totals for progress.

Sequences run in lanes: the pool of model actors (the default) or a gang of actors sharing one
sequence (pipeline.gang_phase: long sequences). Each lane has its own runnable queue and retry
heap, so the loop of one never starts a sequence of the other.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, deque
from dataclasses import dataclass

from .manifest import SequenceRecord, Status

STATUSES: tuple[Status, ...] = ("pending", "running", "done", "failed")
POOL, GANG = "pool", "gang"  # lanes


@dataclass(frozen=True)
class RunningAttempt:
    attempt: int  # counted over all driver sessions, as in the manifest
    attempt_id: str
    started_at: float  # wall clock (for status)
    started: float  # monotonic (for durations)


class SequenceTable:
    """Records by id, with incrementally kept counts, queues and frame totals."""

    def __init__(self) -> None:
        self._records: dict[str, SequenceRecord] = {}
        self._counts: Counter[str] = Counter(dict.fromkeys(STATUSES, 0))
        self._runnable: dict[str, deque[str]] = {POOL: deque(), GANG: deque()}
        self._backoff: dict[str, list[tuple[float, int, str]]] = {POOL: [], GANG: []}  # (not before, tie, id)
        self._gang: set[str] = set()  # sequences of the gang lane (few: only long ones go there)
        self._tie = itertools.count()
        self._running: dict[str, RunningAttempt] = {}
        self._session_attempts: Counter[str] = Counter()
        self._expected: dict[str, int | None] = {}  # frames an unfinished sequence will give (None: unknown)
        self.frames_done = 0  # frames of done sequences, all sessions
        self.frames_done_session = 0
        self.frames_todo = 0  # expected frames of unfinished sequences whose count is known
        self.unknown_todo = 0  # unfinished sequences whose count is known only after decoding (videos)

    # -- filling -----------------------------------------------------------------------------

    def add(self, record: SequenceRecord, expected_frames: int | None = None) -> None:
        """A sequence as restored or discovered; a pending one queues up behind those before it."""
        sid = record.sequence_id
        if sid in self._records:
            raise ValueError(f"sequence {sid} is already in the table")
        if record.status == "running":  # a record from a driver that stopped: not running now
            record.status = "pending"
        self._records[sid] = record
        self._counts[record.status] += 1
        if record.status == "done":
            self.frames_done += record.num_frames or 0
        elif record.status == "pending":
            self._runnable[POOL].append(sid)
            self._expect(sid, expected_frames)

    # -- questions the loop asks -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, sid: str) -> SequenceRecord:
        return self._records[sid]

    @property
    def counts(self) -> dict[str, int]:
        return {status: self._counts[status] for status in STATUSES}

    @property
    def unfinished(self) -> bool:
        return self._counts["pending"] + self._counts["running"] > 0

    @property
    def running(self) -> dict[str, RunningAttempt]:
        return self._running

    def records(self) -> list[SequenceRecord]:
        return list(self._records.values())

    def session_attempts(self, sid: str) -> int:
        return self._session_attempts[sid]

    def pop_runnable(self, now: float, lane: str = POOL) -> str | None:
        """The lane's next sequence to start: retries whose backoff is over first, then in order."""
        backoff, runnable = self._backoff[lane], self._runnable[lane]
        due = []
        while backoff and backoff[0][0] <= now:
            due.append(heapq.heappop(backoff)[2])
        runnable.extendleft(reversed(due))
        return runnable.popleft() if runnable else None

    def next_retry_at(self, lane: str = POOL) -> float | None:
        """When the lane's earliest retry waiting out its backoff becomes runnable."""
        backoff = self._backoff[lane]
        return backoff[0][0] if backoff else None

    def lane(self, sid: str) -> str:
        return GANG if sid in self._gang else POOL

    def unfinished_in(self, lane: str) -> int:
        """Pending or running sequences of a lane (the gang lane's are counted one by one: few)."""
        gang = sum(self._records[sid].status in ("pending", "running") for sid in self._gang)
        return gang if lane == GANG else self._counts["pending"] + self._counts["running"] - gang

    def expected_frames(self, sid: str) -> int | None:
        """Frames an unfinished sequence will give, if known before decoding."""
        return self._expected.get(sid)

    def hand_to_gang(self, sid: str, frames: int) -> None:
        """A running sequence whose decoded length (`frames`) sends it to the gang lane: its
        attempt is not counted, as it never ran."""
        record = self._records[sid]
        self._running.pop(sid)
        record.attempts -= 1
        self._session_attempts[sid] -= 1
        self._move(record, "pending")
        self._unexpect(sid)
        self._expect(sid, frames)
        self._gang.add(sid)
        self._runnable[GANG].append(sid)

    def send_to_gang(self, sids: set[str]) -> None:
        """Move these pending, not yet started sequences to the gang lane (one pass over the queue)."""
        sids = {sid for sid in sids if self._records[sid].status == "pending"}
        pool = self._runnable[POOL]
        self._runnable[POOL] = deque(sid for sid in pool if sid not in sids)
        self._runnable[GANG].extend(sid for sid in pool if sid in sids)
        self._gang |= sids

    # -- state changes -----------------------------------------------------------------------

    def start(self, sid: str, attempt_id: str, *, started_at: float, started: float) -> RunningAttempt:
        record = self._records[sid]
        self._move(record, "running")
        record.attempts += 1
        self._session_attempts[sid] += 1
        running = RunningAttempt(record.attempts, attempt_id, started_at, started)
        self._running[sid] = running
        return running

    def done(self, record: SequenceRecord) -> None:
        """The sequence was committed; `record` (from its marker) replaces what we had."""
        sid = record.sequence_id
        self._counts[self._records[sid].status] -= 1
        self._running.pop(sid, None)
        self._unexpect(sid)
        record.status = "done"
        self._records[sid] = record
        self._counts["done"] += 1
        self.frames_done += record.num_frames or 0
        self.frames_done_session += record.num_frames or 0

    def retry(self, sid: str, kind: str, error: str, not_before: float) -> None:
        record = self._fail_attempt(sid, kind, error)
        self._move(record, "pending")
        heapq.heappush(self._backoff[self.lane(sid)], (not_before, next(self._tie), sid))

    def fail(self, sid: str, kind: str, error: str) -> None:
        record = self._fail_attempt(sid, kind, error)
        self._move(record, "failed")
        self._unexpect(sid)

    def stop(self) -> None:
        """The driver stops: what was running is pending again (it runs in the next session)."""
        for sid in list(self._running):
            self._running.pop(sid)
            self._move(self._records[sid], "pending")

    # -- internals ---------------------------------------------------------------------------

    def _fail_attempt(self, sid: str, kind: str, error: str) -> SequenceRecord:
        record = self._records[sid]
        record.error, record.error_kind = error, kind
        self._running.pop(sid, None)
        return record

    def _move(self, record: SequenceRecord, status: Status) -> None:
        self._counts[record.status] -= 1
        record.status = status
        self._counts[status] += 1

    def _expect(self, sid: str, frames: int | None) -> None:
        self._expected[sid] = frames
        if frames is None:
            self.unknown_todo += 1
        else:
            self.frames_todo += frames

    def _unexpect(self, sid: str) -> None:
        if sid not in self._expected:
            return
        frames = self._expected.pop(sid)
        if frames is None:
            self.unknown_todo -= 1
        else:
            self.frames_todo -= frames
