"""The run's model actors: a fixed number of slots, each holding one actor, replaced when it dies.

A slot is usable once its actor reports ready (model built, checkpoint loaded). An actor that
dies while starting is replaced, but only so often: actors that keep dying, or a model that
cannot load, stop the run, as does no actor starting within `resources.actor_start_timeout_s`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import InfrastructureError
from .execution import Executor, classify, describe
from .logs import log_event
from .redaction import get_logger

logger = get_logger(__name__)


@dataclass(eq=False)
class Slot:
    """A place for one model actor."""

    index: int
    actor: Any = None
    ready: bool = False
    inflight: set = field(default_factory=set)  # result refs of attempts on the current actor


class ActorPool:
    def __init__(self, executor: Executor, size: int, *, start_timeout_s: float):
        self._executor = executor
        self.slots = [Slot(i) for i in range(size)]
        self._starting: dict[Any, Slot] = {}  # ready ref -> slot
        self._failures = 0
        self._start_timeout_s = start_timeout_s
        self._none_ready_since: float | None = time.monotonic()
        for slot in self.slots:
            self.replace(slot)

    @property
    def starting_refs(self) -> list[Any]:
        return list(self._starting)

    def is_starting(self, ref: Any) -> bool:
        return ref in self._starting

    def replace(self, slot: Slot) -> None:
        """Kill the slot's actor (if any) and start a fresh one."""
        if slot.actor is not None:
            self._executor.kill(slot.actor)
        self._starting = {r: s for r, s in self._starting.items() if s is not slot}
        slot.actor, ready_ref = self._executor.start_actor()
        slot.ready, slot.inflight = False, set()
        self._starting[ready_ref] = slot

    def started(self, ref: Any) -> None:
        """An actor's ready ref resolved: the slot is usable, or the actor is replaced."""
        slot = self._starting.pop(ref)
        try:
            info = self._executor.get(ref)
        except Exception as exc:
            if classify(exc) == "init":
                raise InfrastructureError(describe(exc)) from exc
            self._failures += 1
            if self._failures > max(3, 2 * len(self.slots)):
                raise InfrastructureError(f"model actors keep dying while starting: {describe(exc)}") from exc
            log_event(logger, "actor_died_starting", logging.WARNING, actor=slot.index, error=describe(exc))
            self.replace(slot)
            return
        slot.ready = True
        self._failures = 0
        log_event(logger, "actor_ready", actor=slot.index, **info)

    def least_loaded(self, limit: int) -> Slot | None:
        """The ready slot with the fewest attempts in flight, if it has room for one more."""
        free = [s for s in self.slots if s.ready and len(s.inflight) < limit]
        return min(free, key=lambda s: len(s.inflight)) if free else None

    def check_start_deadline(self) -> None:
        """Stop the run when no actor has been ready for resources.actor_start_timeout_s."""
        now = time.monotonic()
        if any(s.ready for s in self.slots):
            self._none_ready_since = None
            return
        if self._none_ready_since is None:  # the last ready actor died: its replacement gets the full time
            self._none_ready_since = now
        if now - self._none_ready_since < self._start_timeout_s:
            return
        raise InfrastructureError(
            f"no model actor started within {self._start_timeout_s:.0f}s (resources.actor_start_timeout_s): "
            f"{self._executor.describe_resources()}"
        )

    def shutdown(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                self._executor.kill(slot.actor)
                slot.actor, slot.ready = None, False
        self._starting.clear()
