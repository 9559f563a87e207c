"""The driver's sequence table: states, order, retries and totals kept without rescans."""

from __future__ import annotations

import time

from pipeline.manifest import SequenceRecord
from pipeline.sequence_table import SequenceTable


def _table(*ids: str, frames: int | None = 4) -> SequenceTable:
    table = SequenceTable()
    for sid in ids:
        table.add(SequenceRecord(sid), frames)
    return table


def test_sequences_start_in_order_and_counts_follow_every_change():
    table = _table("a", "b", "c")
    table.add(SequenceRecord("old", status="done", num_frames=5))
    table.add(SequenceRecord("bad", status="failed"))
    assert table.counts == {"pending": 3, "running": 0, "done": 1, "failed": 1}
    assert (table.frames_done, table.frames_todo) == (5, 12)
    first = table.pop_runnable(0.0)
    running = table.start(first, "x1", started_at=time.time(), started=0.0)
    assert (first, running.attempt) == ("a", 1)
    assert table.counts["running"] == 1 and table.unfinished
    table.done(SequenceRecord("a", num_frames=3))  # fewer frames than expected: the marker is right
    assert table.counts == {"pending": 2, "running": 0, "done": 2, "failed": 1}
    assert (table.frames_done, table.frames_done_session, table.frames_todo) == (8, 3, 8)
    assert [table.pop_runnable(0.0), table.pop_runnable(0.0), table.pop_runnable(0.0)] == ["b", "c", None]


def test_a_retry_waits_out_its_backoff_then_goes_first():
    table = _table("a", "b", "c")
    table.start(table.pop_runnable(0.0), "x1", started_at=0.0, started=0.0)
    table.retry("a", "transient", "boom", not_before=10.0)
    assert table["a"].error_kind == "transient" and table.counts["pending"] == 3
    assert table.next_retry_at() == 10.0
    assert table.pop_runnable(5.0) == "b"  # a is still backing off
    assert table.pop_runnable(10.0) == "a"  # due: ahead of c
    assert table.start("a", "x2", started_at=0.0, started=0.0).attempt == 2
    assert table.session_attempts("a") == 2


def test_failures_leave_the_frame_total_and_stop_returns_running_to_pending():
    table = _table("a", "b")
    table.add(SequenceRecord("video"), None)
    assert (table.frames_todo, table.unknown_todo) == (8, 1)
    for _ in range(3):
        table.start(table.pop_runnable(0.0), "x", started_at=0.0, started=0.0)
    table.fail("a", "input", "unreadable")
    table.done(SequenceRecord("video", num_frames=7))
    assert (table.frames_todo, table.unknown_todo, table.frames_done) == (4, 0, 7)
    table.stop()
    assert table.counts == {"pending": 1, "running": 0, "done": 1, "failed": 1}
    assert table.running == {} and table["b"].status == "pending"


def test_a_records_status_running_from_a_stopped_driver_is_pending():
    table = SequenceTable()
    table.add(SequenceRecord("a", status="running"), 2)
    assert table.counts["pending"] == 1 and table.pop_runnable(0.0) == "a"


def test_events_cost_the_same_at_any_size():
    """Per-event time at 100k sequences stays within a small factor of 1k (the old loop grew 360x)."""

    def per_event(n: int) -> float:
        table = _table(*(f"s{i:06d}" for i in range(n)))
        events = 500
        begin = time.perf_counter()
        for i in range(events):
            sid = table.pop_runnable(float(i))
            table.start(sid, "x", started_at=0.0, started=0.0)
            if i % 10 == 0:
                table.retry(sid, "transient", "e", float(i) + 0.5)
            else:
                table.done(SequenceRecord(sid, num_frames=4))
            assert table.unfinished and table.counts["done"] >= 0
        return (time.perf_counter() - begin) / events

    small, large = min(per_event(1000) for _ in range(3)), min(per_event(100_000) for _ in range(3))
    assert large < 5 * small + 5e-6, (small, large)
