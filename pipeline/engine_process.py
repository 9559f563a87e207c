"""The model and its engine in a process of their own, beside each model actor.

An engine thread inside the actor shared the actor's GIL with everything else the actor does:
receiving the next sequence, handing frames to the writer processes, merging their results,
writing files. Its kernel launches are Python, so each of those slowed inference down (on one
H200: 2.72 s a 240-frame sequence in the actor against 2.51 s alone). Here the engine runs in a
spawned process that holds the model (and, on a GPU, the only CUDA context); the actor only
moves bytes:

- input: the actor writes a sequence's uint8 pixels to a file in shared memory (`/dev/shm`, or
  the temp folder when that is too small) and sends a small request down a pipe; requests queue
  in the engine process, so the next sequence is ready the moment the current one ends;
- output: each frame's depth and confidence (and local points) go into a ring of slots in a
  second shared file, and a small message (cameras, index) goes up the pipe. The actor copies a
  frame out of its slot and marks it consumed; the engine waits for a free slot only when the
  ring is full (chunked and streaming modes on long sequences: bounded host memory).

The engine process's own per-frame work is one copy into the ring, done by a sender thread.
Colours are not sent: they are the input pixels (`(u8 / 255) * 255` rounds back to `u8`).

Failure: if the engine process dies, every sequence it held fails with an `InfrastructureError`
(retried by the coordinator) and the actor starts a new engine process for the next one. Files:
the actor deletes each sequence's files when the sequence ends; folders a killed actor left
behind are deleted by the engine process when it sees its actor gone, and by the next actor on
the node (`remove_stale_scratch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from zipmap_core.engines.results import FramePrediction

from .decode import PIXEL_VALUES
from .errors import InfrastructureError
from .overlap import remove_stale_scratch
from .spec import JobSpec
from .testing import faults

SHM_DIR = "/dev/shm"
FILE_PREFIX = "zipmap-engine-"  # then the actor's pid: stale files of a killed actor are found by it
# pinned host memory for the chunked engine's store, allocated by malloc and registered with CUDA
# by 8 threads: 0.15 s a GiB against cudaHostAlloc's 0.59 on an H200 (bench/long_sequences.py);
# read once by PyTorch's allocator, so it is set before the engine process starts. A value the
# job's environment already has wins.
PINNED_ALLOC_CONF = "pinned_use_cuda_host_register:True,pinned_num_register_threads:8"
ALLOC_CONF_VAR = "PYTORCH_CUDA_ALLOC_CONF"
RING_BYTES = 1 << 30  # output slots per sequence: the whole sequence when it fits, else this much
_HEADER = 16  # int64 consumed (written by the actor), int64 cancelled (written by the actor)
_POLL_S = 0.002
# exactly DecodedSequence.images() per value: float32(u8) / 255
ENGINE_CRASH_POINT = "engine.frame_computed"  # in the engine process, after a frame left the engine


@dataclass(frozen=True)
class _Request:
    key: int
    sequence_id: str
    input_path: str
    output_path: str
    shape: tuple[int, int, int, int]  # S, 3, H, W
    ring: int  # output slots
    local_points: bool
    want_state: bool
    queued: float = 0.0  # when the actor sent it (wall clock)


def remove_stale_files() -> int:
    """Delete what killed actors on this node left: frame writers' folders, sequences' files that
    were still waiting for the engine (the engine deletes a sequence's files once it has them open)."""
    removed = remove_stale_scratch()
    for folder in _scratch_dirs():
        removed += remove_stale_scratch(folder, prefix=FILE_PREFIX)
    return removed


class _Ring:
    """A sequence's output file: a header, then `slots` frames of depth, confidence (and local points)."""

    def __init__(self, path: str, shape: tuple[int, int, int, int], slots: int, local_points: bool, create: bool):
        _, _, h, w = shape
        self.planes = 5 if local_points else 2
        self.slots = slots
        size = _HEADER + slots * self.planes * h * w * 4
        if create:
            with open(path, "wb") as f:
                f.truncate(size)
        self._map = np.memmap(path, np.uint8, "r+", shape=(size,))
        self.header = self._map[:_HEADER].view(np.int64)
        self.frames = self._map[_HEADER:].view(np.float32).reshape(slots, self.planes, h, w)

    @staticmethod
    def slots_for(shape: tuple[int, int, int, int], local_points: bool) -> int:
        s, _, h, w = shape
        return max(1, min(s, RING_BYTES // ((5 if local_points else 2) * h * w * 4)))

    def wait_free(self, index: int) -> bool:
        """Wait until frame `index` has a free slot; False if the actor gave the sequence up."""
        while index - int(self.header[0]) >= self.slots:
            if self.header[1]:
                return False
            time.sleep(_POLL_S)
        return not self.header[1]

    def put(self, index: int, frame: FramePrediction) -> None:
        slot = self.frames[index % self.slots]
        slot[0] = frame.depth
        slot[1] = frame.depth_conf
        if self.planes == 5:
            slot[2:] = np.moveaxis(frame.local_points, -1, 0)

    def take(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Copies of frame `index`'s maps; its slot is free again afterwards."""
        slot = self.frames[index % self.slots]
        depth, conf = slot[0].copy(), slot[1].copy()
        local = np.ascontiguousarray(np.moveaxis(slot[2:], 0, -1)) if self.planes == 5 else None
        self.header[0] = index + 1
        return depth, conf, local

    def cancel(self) -> None:
        self.header[1] = 1


# --- the actor's side ------------------------------------------------------------------------


class EngineProcess:
    """One engine process and the actor's end of its pipe; sequences may be submitted from several
    threads at once and run one after another, in the order they were submitted."""

    def __init__(self, spec: JobSpec):
        ctx = multiprocessing.get_context("spawn")  # a forked child of a CUDA process is unusable
        # the child inherits this process's environment; the actor itself never touches CUDA
        os.environ.setdefault(ALLOC_CONF_VAR, PINNED_ALLOC_CONF)
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(spec, child, os.getpid()), name="zipmap-engine", daemon=True)
        self._process.start()
        child.close()
        self._lock = threading.Lock()  # sends, the inboxes and the dead flag
        # waiting for the process: Popen.poll is not thread-safe (two threads' waitpid race, and the
        # loser takes a reaped process for a live one), and the reader and close() both wait for it
        self._reaping = threading.Lock()
        self._inboxes: dict[int, queue.Queue] = {}
        self._keys = itertools.count()
        self.dead: str | None = None
        self.init_error: str | None = None
        self.info: dict[str, Any] = {}
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            kind, payload = "init_error", f"the engine process exited with code {self._exitcode()} while starting"
        if kind == "init_error":
            self.init_error = payload
            self.dead = payload
            self.close()
            return
        self.info = payload
        threading.Thread(target=self._read, name="engine-results", daemon=True).start()

    def run(
        self, sequence_id: str, pixels: np.ndarray, *, local_points: bool, on_state: Callable | None
    ) -> EngineRun:
        """Queue a sequence ([S, 3, H, W] uint8) in the engine process; its results come from the
        returned `EngineRun`, which must be closed."""
        shape = tuple(int(n) for n in pixels.shape)
        slots = _Ring.slots_for(shape, local_points)
        need = pixels.nbytes + slots * (5 if local_points else 2) * shape[2] * shape[3] * 4
        key = next(self._keys)
        base = os.path.join(_folder_for(need), f"{FILE_PREFIX}{os.getpid()}-{key}")
        request = _Request(
            key, sequence_id, f"{base}.in", f"{base}.out", shape, slots, local_points, on_state is not None
        )
        run = EngineRun(self, request, pixels, on_state)
        try:
            with open(request.input_path, "wb") as f:
                f.write(memoryview(np.ascontiguousarray(pixels)).cast("B"))
            run.ring = _Ring(request.output_path, shape, slots, local_points, create=True)
            with self._lock:
                if self.dead is not None:
                    raise InfrastructureError(f"sequence {sequence_id}: {self.dead}")
                self._inboxes[key] = run.inbox
                self._conn.send(dataclasses.replace(request, queued=time.time()))
        except BaseException:
            run.close()
            raise
        return run

    def forget(self, key: int) -> None:
        with self._lock:
            self._inboxes.pop(key, None)

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                inbox = self._inboxes.get(message[1])
            if inbox is not None:
                inbox.put(message)
        with self._reaping:
            self._process.join(5)
            exitcode = self._process.exitcode
        with self._lock:
            self.dead = f"the engine process died (exit code {exitcode})"
            inboxes, self._inboxes = list(self._inboxes.values()), {}
        for inbox in inboxes:
            inbox.put(("dead", -1, self.dead))

    def _exitcode(self) -> int | None:
        return self._process.exitcode

    def close(self) -> None:
        """Stop the engine process (after the sequence it runs)."""
        try:
            with self._lock:
                self._conn.send(None)
        except OSError:
            pass
        with self._reaping:
            self._process.join(30)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()


class EngineRun:
    """One sequence in the engine process: its engine settings, scene state and frames."""

    def __init__(self, engine: EngineProcess, request: _Request, pixels: np.ndarray, on_state: Callable | None):
        self._engine = engine
        self._request = request
        self._pixels = pixels
        self._on_state = on_state
        self.inbox: queue.Queue = queue.Queue()
        self.ring: _Ring | None = None
        self.settings: dict | None = None
        self.timings: dict[str, float] = {}
        self._done = False

    def _next(self) -> tuple:
        message = self.inbox.get()
        kind = message[0]
        if kind == "dead":
            raise InfrastructureError(f"sequence {self._request.sequence_id}: {message[2]}")
        if kind == "error":
            raise RuntimeError(message[2])
        return message

    def engine_settings(self) -> dict:
        """The settings the engine runs this sequence with ("auto" resolved); waits for its turn."""
        while self.settings is None:
            message = self._next()
            if message[0] == "engine":
                self.settings = message[2]
        return self.settings

    def frames(self) -> Iterator[FramePrediction]:
        """The sequence's frames in order, as the engine yields them."""
        self.engine_settings()
        while True:
            message = self._next()
            kind = message[0]
            if kind == "state":
                self._on_state(message[2])
            elif kind == "frame":
                _, _, index, extrinsic, intrinsic, camera_conf = message
                depth, conf, local = self.ring.take(index)
                image = np.ascontiguousarray(self._pixels[index].transpose(1, 2, 0))
                yield FramePrediction(index, extrinsic, intrinsic, depth, conf, image, camera_conf, local)
            elif kind == "done":
                self.timings = message[2]
                self._done = True
                return

    def close(self) -> None:
        """Give the sequence up if it has not ended (the engine stops at its next frame) and delete its files."""
        self._engine.forget(self._request.key)
        if self.ring is not None and not self._done:
            self.ring.cancel()
        self.ring = None
        for path in (self._request.input_path, self._request.output_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _scratch_dirs() -> list[str]:
    dirs = [SHM_DIR] if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK) else []
    return [*dirs, tempfile.gettempdir()]


def _folder_for(need: int) -> str:
    """Shared memory when it has room for twice what a sequence needs, else the temp folder."""
    for folder in _scratch_dirs():
        stat = os.statvfs(folder)
        if folder != SHM_DIR or stat.f_bavail * stat.f_frsize >= 2 * need:
            return folder
    return tempfile.gettempdir()


# --- the engine process ----------------------------------------------------------------------


def _serve(spec: JobSpec, conn, parent_pid: int) -> None:
    """The engine process: build the model, then run requests until told to stop or the actor is gone."""
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-actor", daemon=True).start()
    from .actors import build_model

    try:
        model, device = build_model(spec)
    except Exception as exc:  # reported by the actor's ready(): a broken checkpoint must stop the run
        conn.send(("init_error", f"{type(exc).__name__}: {exc}"))
        return
    info = {"device": str(device), "engine_pid": os.getpid(), "alloc_conf": os.environ.get(ALLOC_CONF_VAR)}
    conn.send(("ready", info))
    outbox: queue.Queue = queue.Queue()
    sender = threading.Thread(target=_send_all, args=(conn, outbox), name="engine-sender", daemon=True)
    sender.start()
    runner = _Runner(spec, model, device, outbox)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the actor is gone
            break
        if request is None:  # the actor closes us
            break
        runner.run(request)
    outbox.put(None)
    sender.join()


def _watch_parent(parent_pid: int) -> None:
    """Exit with the actor, even in the middle of a sequence."""
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def _send_all(conn, outbox: queue.Queue) -> None:
    """Copy frames into their slots and tell the actor; everything else goes up the pipe as it is."""
    while (message := outbox.get()) is not None:
        if message[0] == "frame":
            _, key, index, frame, ring = message
            ring.put(index, frame)
            message = ("frame", key, index, frame.extrinsic, frame.intrinsic, frame.camera_conf)
        try:
            conn.send(message)
        except OSError:  # the actor is gone
            return


class _Runner:
    def __init__(self, spec: JobSpec, model, device, outbox: queue.Queue):
        self._spec = spec
        self._model = model
        self._device = device
        self._outbox = outbox
        self._frames_run: dict[tuple[int, int], int] = {}  # frames run per image size

    def run(self, request: _Request) -> None:
        import torch

        from zipmap_core.engines import reconstruct

        key = request.key
        try:
            pixels = np.memmap(request.input_path, np.uint8, "c", shape=request.shape)
            ring = _Ring(request.output_path, request.shape, request.ring, request.local_points, create=False)
        except FileNotFoundError:  # the actor gave it up before its turn
            return
        finally:  # mapped by both sides now (or given up): the memory goes when both let go
            for path in (request.input_path, request.output_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        if ring.header[1]:
            return
        try:
            started = time.time()
            engine = self._engine_for(request.shape)
            self._outbox.put(("engine", key, engine.settings()))
            faults.delay()
            begin = time.perf_counter()
            images = self._images(pixels, engine, torch)
            del pixels
            on_state = (lambda state: self._outbox.put(("state", key, state.to("cpu")))) if request.want_state else None
            with torch.inference_mode():
                frames = reconstruct(self._model, images, engine, device=self._device, on_state=on_state)
                try:
                    for index, frame in enumerate(frames):
                        if not ring.wait_free(index):
                            break
                        self._outbox.put(("frame", key, index, frame, ring))
                        faults.crash_point(ENGINE_CRASH_POINT, request.sequence_id)
                finally:
                    frames.close()
            end = time.perf_counter()
            stamps = {"engine_queued": request.queued, "engine_start": started, "engine_end": time.time()}
            self._outbox.put(("done", key, {"infer_s": end - begin, **stamps}))
        except Exception as exc:
            self._outbox.put(("error", key, f"{type(exc).__name__}: {exc}"))

    def _images(self, pixels: np.ndarray, engine, torch):
        """The float images DecodedSequence.images() gives: made on the accelerator (a quarter of the
        bytes to copy) for the offline engine, which moves them all there anyway; on the host for
        the others, which move a chunk at a time."""
        if self._device.type == "cpu" or engine.mode != "offline":
            return torch.from_numpy(PIXEL_VALUES[pixels])
        table = torch.from_numpy(PIXEL_VALUES).to(self._device)
        images = torch.empty(pixels.shape, dtype=torch.float32, device=self._device)
        for begin in range(0, len(images), 64):  # bounded int64 indices
            images[begin : begin + 64] = table[torch.from_numpy(pixels[begin : begin + 64]).to(self._device).long()]
        return images

    def _engine_for(self, shape: tuple[int, int, int, int]):
        """The spec's engine with "auto" decided for this sequence (zipmap_core.engines.auto). What
        this engine already ran at this image size counts towards the run's length: a run of many
        sequences compiles once it has run enough frames to pay the compilation back."""
        from zipmap_core.engines.auto import resolve_engine

        n, hw = shape[0], (shape[2], shape[3])
        self._frames_run[hw] = run_frames = self._frames_run.get(hw, 0) + n
        engine = self._spec.engine.model_copy(update={"frame_parallel": 1})  # gangs run long sequences (gang.py)
        engine = resolve_engine(engine, self._model, n, hw, self._device, run_frames=run_frames)
        if engine.fast and getattr(self._model, "_compiled_for_inference", False):
            engine = engine.model_copy(update={"compile": True})  # compiled for good by an earlier sequence
        return engine
