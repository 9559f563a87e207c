"""Keeping the accelerator busy while a model worker writes outputs.

A sequence's frames leave the engine faster than one thread can turn them into rows and points
(unprojection, filtering, packing: ~20 ms a frame at 518x392 on the host). `map_in_processes`
spreads the per-frame host work over `frame_writers` processes while keeping frames in order.
`in_background` runs an engine in a thread (a gang member's, pipeline.gang; a model actor's
engine runs in a process of its own, pipeline.engine_process).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import re
import shutil
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, wait
from functools import partial
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()
_SCRATCH_PREFIX = "zipmap-frames-"


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def in_background(produce: Callable[[], Iterable[T]], max_ahead: int = 0) -> Iterator[T]:
    """Items of `produce()`, computed in a thread up to `max_ahead` ahead (0: no limit).

    The producer's exception is raised here. If the consumer stops early (an error while
    writing), the producer is told to stop at its next item and is waited for, so that it never
    stays blocked, holding whatever it holds (the accelerator's lock).
    """
    items: queue.Queue = queue.Queue(max_ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        source = iter(produce())
        try:
            for item in source:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failed(exc))
        else:
            put(_DONE)
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator's `with` blocks (the lock) end now, not at GC
                close()

    thread = threading.Thread(target=run, name="engine", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], executor: Executor, max_ahead: int | None = None
) -> Iterator[R]:
    """fn over items on `executor`, results in input order.

    At most `max_ahead` items are pending at once (default: twice the executor's workers).
    """
    limit = max_ahead or 2 * getattr(executor, "_max_workers", 1)
    pending: deque[Future] = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # on an early stop: drop what has not started, let what runs finish
        for future in pending:
            future.cancel()
        wait(pending)


def frame_writers(processes: int) -> ProcessPoolExecutor | None:
    """Processes that prepare frames away from the engine's interpreter (None for 0).

    Threads would share the GIL with the engine thread, whose kernel launches are Python; with
    numpy handing the GIL back and forth on every call, both slow to a crawl. Processes are
    started with `spawn`: forking a process that has initialised CUDA is unsafe.
    """
    if processes <= 0:
        return None
    return ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))


def map_in_processes(
    fn: Callable[[T], R], items: Iterable[T], pool: ProcessPoolExecutor | None, scratch_dir: str | None = None
) -> Iterator[R]:
    """fn over items in `pool`'s processes (None: right here), results in input order.

    Items and results travel as pickle files in a temporary folder under `scratch_dir` (the
    system's temp folder by default; the page cache, in practice), not through the pool's pipes:
    a pipe moves a multi-MB frame in 64 KiB pieces, and this process takes the GIL back after
    each one, waiting out the engine thread's switch interval every time. Next to a busy Python
    thread, 2 processes prepared 3.4 frames/s through pipes and 33 through files
    (bench/frame_handoff.py, 2 CPU cores).
    """
    if pool is None:
        yield from map(fn, items)
        return
    with tempfile.TemporaryDirectory(prefix=scratch_prefix(), dir=scratch_dir, ignore_cleanup_errors=True) as folder:
        paths = (_dump(item, os.path.join(folder, str(i))) for i, item in enumerate(items))
        for path in ordered_map(partial(_call_on_file, fn), paths, pool):
            yield _load(path)


def scratch_prefix() -> str:
    """The prefix of this process's scratch folders: it names the owner, so `remove_stale_scratch`
    can delete what a killed worker left behind."""
    return f"{_SCRATCH_PREFIX}{os.getpid()}-"


def remove_stale_scratch(scratch_dir: str | None = None, prefix: str = _SCRATCH_PREFIX) -> int:
    """Delete the item folders of `map_in_processes` calls (or files and folders named `prefix`,
    then a pid) whose process has died (a killed worker cannot clean up after itself); returns how
    many. Those of live processes stay."""
    removed = 0
    for entry in os.scandir(scratch_dir or tempfile.gettempdir()):
        owner = re.fullmatch(rf"{re.escape(prefix)}(\d+)-.+", entry.name)
        if not owner or _alive(int(owner[1])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _call_on_file(fn: Callable[[T], R], path: str) -> str:
    return _dump(fn(_load(path)), path + ".out")


def _dump(obj: object, path: str) -> str:
    """Pickle `obj` to `path` with its array buffers written out of band.

    pickle.dumps copies every array into the pickle (holding the GIL); here only the small
    pickle is built in Python and each buffer goes to the file in its own write call, which
    copies it without the GIL. Layout: count, then (length, bytes) for the pickle and each buffer.
    """
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    with open(path, "wb") as f:
        f.write(struct.pack(f"<{len(raws) + 2}Q", len(raws) + 1, len(head), *(r.nbytes for r in raws)))
        f.write(head)
        for raw in raws:
            f.write(raw)
    return path


def _load(path: str):
    """What `_dump` wrote; arrays are views of one buffer read without the GIL, not copies."""
    with open(path, "rb") as f:
        (count,) = struct.unpack("<Q", f.read(8))
        sizes = struct.unpack(f"<{count}Q", f.read(8 * count))
        # np.empty, not bytearray: a bytearray is zero-filled under the GIL (~2 ms for a frame),
        # while these pages are first touched by the read, in the kernel, without it
        data = memoryview(np.empty(sum(sizes), np.uint8))
        f.readinto(data)
    os.unlink(path)
    views, offset = [], 0
    for size in sizes:
        views.append(data[offset : offset + size])
        offset += size
    return pickle.loads(views[0], buffers=views[1:])
