"""Progress of a run as people watch it: sequences and frames done of a total known up front,
frames/s, and an ETA.

The rate is measured over the commits of the last few minutes, from the first commit on, so the
minutes spent starting actors do not count as slowness and the ETA is meaningful as soon as a
few sequences are done. On a terminal the line is redrawn in place; anywhere else (a file, a Ray
job's log) a log line is written every `driver.progress_interval_s` (plain text or JSON, as the
rest of the log), never a carriage return.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from typing import IO, Any

from .logs import log_event
from .redaction import get_logger
from .sequence_table import SequenceTable

logger = get_logger(__name__)

RATE_WINDOW_S = 300.0
TTY_REDRAW_S = 0.5


class Throughput:
    """Frames and sequences per second over the commits of the last RATE_WINDOW_S seconds."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self._window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()  # (time, frames, sequences), cumulative

    def record(self, now: float, frames: int, sequences: int) -> None:
        self._samples.append((now, frames, sequences))
        while len(self._samples) > 2 and now - self._samples[1][0] > self._window_s:
            self._samples.popleft()  # keep one sample older than the window as the base

    def rates(self, now: float) -> tuple[float, float] | None:
        """(frames/s, sequences/s), or None before there are two commits to measure between."""
        if len(self._samples) < 2 or now <= self._samples[0][0]:
            return None
        t0, frames0, seqs0 = self._samples[0]
        _, frames, seqs = self._samples[-1]
        return (frames - frames0) / (now - t0), (seqs - seqs0) / (now - t0)


class ProgressReport:
    """Shows the table's progress, rate-limited: redrawn on a terminal `stream`, else logged.
    A no-op when disabled."""

    def __init__(
        self,
        run_id: str,
        table: SequenceTable,
        *,
        enabled: bool = True,
        interval_s: float = 10.0,
        stream: IO[str] | None = None,
    ):
        self._run_id = run_id
        self._table = table
        self._enabled = enabled
        self._stream = stream or sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._every = TTY_REDRAW_S if self._tty else interval_s
        self._started = time.monotonic()
        self._last_shown = 0.0
        self.throughput = Throughput()
        self._drawn = False  # the terminal's last line is ours
        self._handlers: list[logging.Handler] = []
        if enabled and self._tty:  # log lines to the same terminal go above the progress line
            self._handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is self._stream]
            for handler in self._handlers:
                handler.emit = self._above(handler.emit)

    def committed(self, now: float) -> None:
        """Call after each commit (feeds the rate)."""
        self.throughput.record(now, self._table.frames_done_session, self._table.counts["done"])

    def update(self, now: float | None = None, *, force: bool = False) -> None:
        if not self._enabled:
            return
        now = time.monotonic() if now is None else now
        if not force and now - self._last_shown < self._every:
            return
        self._last_shown = now
        if self._tty:
            self._stream.write(f"\r{self.line(now)}\x1b[K")
            self._stream.flush()
            self._drawn = True
        else:
            log_event(logger, "progress", message=self.line(now), run_id=self._run_id, **self.facts(now))

    def close(self) -> None:
        if not self._enabled:
            return
        self.update(force=True)
        for handler in self._handlers:
            del handler.emit  # the class's own again
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _above(self, emit):
        """A handler's emit that clears the progress line, writes the log line, and draws the
        progress line again below it."""

        def emit_above(record: logging.LogRecord) -> None:
            drawn = self._drawn
            if drawn:
                self._stream.write("\r\x1b[K")
            emit(record)
            if drawn:
                self._stream.write(f"{self.line(time.monotonic())}\x1b[K")
                self._stream.flush()

        return emit_above

    # -- what is shown -----------------------------------------------------------------------

    def facts(self, now: float | None = None) -> dict[str, Any]:
        """The numbers behind the line (also what the heartbeat tells `status`)."""
        now = time.monotonic() if now is None else now
        table = self._table
        counts = table.counts
        rates = self.throughput.rates(now)
        frames_per_s, seqs_per_s = rates if rates else (0.0, 0.0)
        eta = None
        if table.unknown_todo == 0 and frames_per_s > 0:
            eta = table.frames_todo / frames_per_s
        elif seqs_per_s > 0:
            eta = (counts["pending"] + counts["running"]) / seqs_per_s
        return {
            **counts,
            "sequences": len(table),
            "frames_done": table.frames_done,
            "frames_total": table.frames_done + table.frames_todo,
            "frames_unknown_sequences": table.unknown_todo,
            "frames_per_s": round(frames_per_s, 3),
            "session_elapsed_s": round(now - self._started, 3),
            "eta_s": None if eta is None else round(eta, 1),
        }

    def line(self, now: float) -> str:
        f = self.facts(now)
        unknown = "+?" if f["frames_unknown_sequences"] else ""
        eta = _clock(f["eta_s"]) if f["eta_s"] is not None else "?"
        return (
            f"run {self._run_id}: {f['done']}/{f['sequences']} sequences ({f['failed']} failed, "
            f"{f['running']} running), {f['frames_done']}/{f['frames_total']}{unknown} frames, "
            f"{f['frames_per_s']:.2f} frames/s, elapsed {_clock(f['session_elapsed_s'])}, ETA {eta}"
        )


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
