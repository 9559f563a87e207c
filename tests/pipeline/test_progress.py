"""Progress: totals known up front, rate and ETA from commits, lines (not \\r) off a terminal; JSON logs."""

from __future__ import annotations

import io
import json
import logging

from pipeline.logs import JsonFormatter, configure_logging, log_event
from pipeline.manifest import SequenceRecord
from pipeline.progress import ProgressReport, Throughput
from pipeline.sequence_table import SequenceTable


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _table() -> SequenceTable:
    table = SequenceTable()
    for i in range(10):
        table.add(SequenceRecord(f"s{i}"), 10)
    return table


def _commit(table: SequenceTable, report: ProgressReport, now: float) -> None:
    sid = table.pop_runnable(now)
    table.start(sid, "x", started_at=0.0, started=now)
    table.done(SequenceRecord(sid, num_frames=10))
    report.committed(now)


def test_rate_is_measured_from_the_first_commit_so_start_up_does_not_count():
    meter = Throughput()
    assert meter.rates(100.0) is None
    meter.record(60.0, 10, 1)  # the first commit after a minute of actor start-up
    assert meter.rates(70.0) is None  # one commit: nothing to measure between yet
    meter.record(70.0, 20, 2)
    meter.record(80.0, 30, 3)
    frames_per_s, seqs_per_s = meter.rates(80.0)
    assert (frames_per_s, seqs_per_s) == (1.0, 0.1)


def test_eta_and_total_from_the_start():
    table = _table()
    report = ProgressReport("r", table, enabled=False)
    facts = report.facts(0.0)
    assert (facts["sequences"], facts["frames_total"], facts["eta_s"]) == (10, 100, None)
    for t in (30.0, 40.0, 50.0):
        _commit(table, report, t)
    facts = report.facts(50.0)
    assert (facts["done"], facts["frames_done"], facts["frames_total"]) == (3, 30, 100)
    assert facts["frames_per_s"] == 1.0 and facts["eta_s"] == 70.0  # 70 frames left at 1 frame/s


def test_off_a_terminal_progress_is_plain_log_lines(caplog):
    table = _table()
    stream = io.StringIO()
    report = ProgressReport("r", table, interval_s=0.0, stream=stream)
    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        _commit(table, report, 1.0)
        report.update(2.0)
        report.close()
    assert stream.getvalue() == ""  # nothing written around the log
    lines = [r for r in caplog.records if r.name == "pipeline.progress"]
    assert len(lines) == 2 and "1/10 sequences" in lines[0].getMessage() and "10/100 frames" in lines[0].getMessage()
    assert lines[0].fields["event"] == "progress" and lines[0].fields["done"] == 1


def test_on_a_terminal_the_line_is_redrawn_and_log_lines_go_above_it():
    terminal = _Terminal()
    configure_logging(stream=terminal)
    try:
        report = ProgressReport("r", _table(), stream=terminal)
        report.update(force=True)
        logging.getLogger("pipeline.test").info("an event")
        report.close()
        logging.getLogger("pipeline.test").info("after")
    finally:
        configure_logging()
    bar = "run r: 0/10 sequences (0 failed, 0 running), 0/100 frames, 0.00 frames/s, elapsed 0:00:00, ETA ?\x1b[K"
    lines = terminal.getvalue().split("\n")
    assert lines[0] == f"\r{bar}\r\x1b[K" + lines[0].split("\x1b[K", 2)[2]  # wiped, then the log line
    assert lines[0].endswith("pipeline.test: an event")
    assert lines[1] == f"{bar}\r{bar}"  # drawn again below it; close() draws the last state
    assert lines[2].endswith("pipeline.test: after") and lines[3] == ""  # after close: plain lines


def test_json_log_lines_carry_event_fields():
    stream = io.StringIO()
    configure_logging(fmt="json", stream=stream)
    try:
        log_event(logging.getLogger("pipeline.test"), "sequence_done", sequence_id="a b", frames=3, seconds=1.5)
    finally:
        configure_logging()
    line = json.loads(stream.getvalue())
    assert line["event"] == "sequence_done" and line["sequence_id"] == "a b" and line["frames"] == 3
    assert line["message"] == 'sequence_done sequence_id="a b" frames=3 seconds=1.500'
    assert set(line) >= {"time", "level", "logger"}
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "plain %s", ("text",), None)
    assert json.loads(JsonFormatter().format(record))["message"] == "plain text"
