"""One driver per run: a lease on the run folder, renewed by a heartbeat that carries live progress.

A driver session holds `_lease/<generation>.json`. It takes the run by creating the next
generation's file exclusively (a hard link locally, a conditional PUT `If-None-Match: *` on
S3), so of two drivers starting together exactly one wins and the other stops with exit 3,
naming the holder. The holder rewrites its file every `driver.heartbeat_s`, with the progress
`status` shows, and sooner (at most every `NUDGE_GAP_S`) when the sequences in flight change, so
that `status` lists them even when they are shorter than a heartbeat. A file not rewritten for
`driver.lease_expiry_s` belongs to a dead driver: `status` says so, and the next driver takes the
run over with the next generation (at once when the dead driver ran on the same host and its process
is gone). A driver that finds a newer generation, or cannot renew for longer than the expiry, has
lost the run: it stops without writing anything more to it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import InfrastructureError
from .layout import RunLayout
from .redaction import get_logger
from .spec import DriverSpec
from .storage import Store

NUDGE_GAP_S = 0.25  # shortest time between two writes of the lease file

logger = get_logger(__name__)
HOST = socket.gethostname()


class LeaseHeldError(InfrastructureError):
    """Another live driver holds the run."""


class LeaseLostError(InfrastructureError):
    """This driver no longer holds the run (taken over, or not renewable)."""


@dataclass(frozen=True)
class Lease:
    """One generation's lease file as read back."""

    generation: int
    data: dict[str, Any]

    @property
    def state(self) -> str:
        return self.data.get("state", "running")  # running | released

    @property
    def progress(self) -> dict[str, Any]:
        return self.data.get("progress") or {}

    def age(self, now: float | None = None) -> float:
        """Seconds since the holder last renewed it."""
        return (time.time() if now is None else now) - float(self.data.get("renewed_unix", 0.0))

    def expired(self, now: float | None = None) -> bool:
        return self.age(now) > float(self.data.get("expiry_s", 0.0))

    def holder_alive(self, now: float | None = None) -> bool:
        """Held, renewed within its expiry, and (on this host) its process still exists."""
        if self.state != "running" or self.expired(now):
            return False
        return self.data.get("host") != HOST or _process_exists(int(self.data.get("pid", -1)))

    def describe(self, now: float | None = None) -> str:
        d = self.data
        return f"host {d.get('host')}, pid {d.get('pid')}, since {d.get('since')} (heartbeat {self.age(now):.0f}s ago)"


def read_lease(store: Store, layout: RunLayout) -> Lease | None:
    """The newest lease of a run, or None if no driver ever took it."""
    for _ in range(5):  # a newer driver may delete an older file between listing and reading
        generations = _generations(store, layout)
        if not generations:
            return None
        try:
            return Lease(generations[-1], store.read_json(layout.lease(generations[-1])))
        except FileNotFoundError:
            continue
    raise InfrastructureError(f"cannot read the lease of {layout.run_uri}: it keeps changing")


class RunLease:
    """This driver's lease: acquire, keep alive in a background thread, release."""

    def __init__(self, store: Store, layout: RunLayout, driver: DriverSpec, run_id: str):
        self._store = store
        self._layout = layout
        self._spec = driver
        self._run_id = run_id
        self._id = uuid.uuid4().hex
        self._since = iso_time(time.time())
        self.generation = 0
        self.held = False
        self._lost: str | None = None
        self._renewed = 0.0  # monotonic time of the last successful write
        self._progress: dict[str, Any] = {}
        self._stop = threading.Event()
        self._nudge = threading.Event()  # the sequences in flight changed: write before the heartbeat is due
        self._thread: threading.Thread | None = None

    def refuse_if_held(self) -> None:
        """Raise LeaseHeldError now if a live driver holds the run (a cheap check before slow work)."""
        holder = read_lease(self._store, self._layout)
        if holder is not None and holder.holder_alive():
            raise self._held(holder)

    def acquire(self) -> Lease | None:
        """Take the run, or raise LeaseHeldError naming the live holder; returns the previous lease."""
        for _ in range(5):
            previous = read_lease(self._store, self._layout)
            if previous is not None and previous.holder_alive():
                raise self._held(previous)
            self.generation = previous.generation + 1 if previous else 1
            try:
                self._store.create_exclusive(self._layout.lease(self.generation), self._document("running"))
            except FileExistsError:  # another driver took this generation first
                continue
            self.held, self._renewed = True, time.monotonic()
            if previous is not None:
                logger.info("took over run %s from %s (%s)", self._run_id, previous.describe(), previous.state)
            self._remove_older()
            self._thread = threading.Thread(target=self._beat_forever, name="run-lease-heartbeat", daemon=True)
            self._thread.start()
            return previous
        raise self._held(read_lease(self._store, self._layout))

    def publish(self, progress: dict[str, Any]) -> None:
        """The progress the next heartbeat writes (replaced as a whole: safe across threads); a change
        in the sequences in flight brings that write forward."""
        in_flight = [r.get("sequence_id") for r in progress.get("running_sequences", [])]
        if in_flight != [r.get("sequence_id") for r in self._progress.get("running_sequences", [])]:
            self._nudge.set()
        self._progress = progress

    def check(self) -> None:
        """Raise LeaseLostError if this driver may no longer change the run."""
        if self._lost is None and time.monotonic() - self._renewed > self._spec.lease_expiry_s:
            self._lost = f"could not renew the lease for over {self._spec.lease_expiry_s:.0f}s"
        if self._lost is not None:
            self.held = False
            self._halt()
            raise LeaseLostError(f"run {self._run_id}: this driver lost the run: {self._lost}; stopping")

    def release(self, progress: dict[str, Any]) -> None:
        """Stop the heartbeat and mark the lease released (a no-op if it was lost)."""
        self._halt()
        if self._thread is not None:
            self._thread.join()
        if not self.held or self._lost is not None:
            return
        self._progress = progress
        try:
            self._store.write_bytes(self._layout.lease(self.generation), self._document("released"))
        except Exception as exc:  # it expires on its own
            logger.warning("could not release the run's lease: %s", exc)
        self.held = False

    # -- heartbeat ---------------------------------------------------------------------------

    def _halt(self) -> None:
        """End the heartbeat thread now, whatever it is waiting for."""
        self._stop.set()
        self._nudge.set()

    def _beat_forever(self) -> None:
        while True:
            self._nudge.wait(self._spec.heartbeat_s)
            if self._stop.is_set():
                return
            self._nudge.clear()
            self.beat()
            if self._stop.wait(NUDGE_GAP_S):
                return

    def beat(self) -> None:
        """Renew the lease with the latest progress, unless a newer driver has taken the run."""
        try:
            newer = [g for g in _generations(self._store, self._layout) if g > self.generation]
            if newer:
                taker = read_lease(self._store, self._layout)
                self._lost = f"taken over by {taker.describe() if taker else 'another driver'}"
                logger.error("run %s: %s", self._run_id, self._lost)
                self._halt()
                return
            self._store.write_bytes(self._layout.lease(self.generation), self._document("running"))
            self._renewed = time.monotonic()
        except Exception as exc:  # a store hiccup: the next beat tries again, check() sees expiry
            logger.warning("could not renew the run's lease: %s", exc)

    # -- internals ---------------------------------------------------------------------------

    def _document(self, state: str) -> bytes:
        now = time.time()
        data = {
            "run_id": self._run_id,
            "generation": self.generation,
            "driver_id": self._id,
            "host": HOST,
            "pid": os.getpid(),
            "since": self._since,
            "renewed_at": iso_time(now),
            "renewed_unix": now,
            "heartbeat_s": self._spec.heartbeat_s,
            "expiry_s": self._spec.lease_expiry_s,
            "state": state,
            "progress": self._progress,
        }
        return json.dumps(data, indent=2, sort_keys=True).encode()

    def _held(self, holder: Lease | None) -> LeaseHeldError:
        who = holder.describe() if holder else "another driver"
        return LeaseHeldError(
            f"run {self._run_id} is being run by another driver: {who}. Wait for it to finish; if it is "
            f"dead, `resume` takes over {self._spec.lease_expiry_s:.0f}s after its last heartbeat"
        )

    def _remove_older(self) -> None:
        """Delete older generations' files (and the temporary files their dead writers left)."""
        for entry in self._store.ls(self._layout.leases):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            stem = name.partition(".")[0]
            if stem.isdigit() and int(stem) < self.generation:
                try:
                    self._store.delete(self._store.uri(entry["name"]))
                except Exception as exc:  # harmless: the newest generation is what counts
                    logger.debug("could not remove an old lease: %s", exc)


def _generations(store: Store, layout: RunLayout) -> list[int]:
    found = []
    for entry in store.ls(layout.leases):
        stem, dot, ext = entry["name"].rstrip("/").rsplit("/", 1)[-1].partition(".")
        if dot and ext == "json" and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def _process_exists(pid: int) -> bool:
    """Whether a process (not a zombie) with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def iso_time(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")
