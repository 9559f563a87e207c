"""Where the chunked engine keeps activations of the frames it is not working on.

On the GPU up to a small budget (no copies at all), then host memory (pinned, so copies run
asynchronously on a side CUDA stream and overlap with compute) up to a byte budget, then files in
a scratch directory. Pinning memory is slow (cudaHostAlloc takes about a second per GB), so
released buffers are reused; every copy into or out of them runs on the one copy stream, whose
order makes reuse safe. `fetch` starts a host-to-device copy and returns a handle, so the next
chunk can be in flight while the current one computes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Self

import torch


@dataclass
class Pending:
    """A tensor whose copy to the device may still be running."""

    tensor: torch.Tensor
    event: torch.cuda.Event | None = None

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.event)
            self.tensor.record_stream(stream)
        return self.tensor


class PinnedPool:
    """Reusable pinned host buffers, carved from slabs of a power-of-two size.

    PyTorch's pinned-memory allocator rounds every request up to a power of two (a 273 MB chunk
    of tokens takes 512 MB) and caches what is freed. Asking it for whole slabs wastes nothing,
    and the next sequence gets the cached slabs back without pinning memory again. Buffers are
    bucketed by size in MiB and reused within a sequence.

    `pin_ahead` pins the slabs a sequence will need on a background thread, so that a first run
    (nothing cached yet) pins while the GPU computes instead of before each `put` that needs a
    new slab: 8.6 s of a 10,000-frame first run on an H200 (57 GiB).
    """

    def __init__(self, slab_bytes: int = 2**31, allocate: Callable[[int], torch.Tensor] | None = None):
        self.slab_bytes = slab_bytes
        self._allocate = allocate or (lambda n: torch.empty(n, dtype=torch.uint8, pin_memory=True))
        self._free: dict[int, list[torch.Tensor]] = {}
        self._slabs: list[list] = []  # [slab, bytes used]
        self._ahead = threading.Condition()
        self._ahead_ready: list[torch.Tensor] = []  # slabs pinned by the background thread, unused yet
        self._ahead_left = 0  # slabs the background thread has still to pin
        self._ahead_thread: threading.Thread | None = None

    def pin_ahead(self, nbytes: int) -> None:
        """Start pinning slabs for `nbytes` more than the pool holds, on a background thread."""
        spare = sum(slab.numel() - used for slab, used in self._slabs)
        count = max(0, -(-(nbytes - spare) // self.slab_bytes))
        if count == 0 or self._ahead_thread is not None:
            return
        self._ahead_left = count
        self._ahead_thread = threading.Thread(target=self._pin_slabs, name="zipmap-pin-ahead", daemon=True)
        self._ahead_thread.start()

    def _pin_slabs(self) -> None:
        while True:
            with self._ahead:
                if self._ahead_left <= 0:
                    return
            try:
                slab = self._allocate(self.slab_bytes)
            except RuntimeError:  # out of pinnable memory: the rest is pinned on demand (or spilled)
                slab = None
            with self._ahead:
                self._ahead_left = 0 if slab is None else self._ahead_left - 1
                if slab is not None:
                    self._ahead_ready.append(slab)
                self._ahead.notify_all()

    def _slab_pinned_ahead(self) -> torch.Tensor | None:
        """The next slab of the background thread (waiting for it if it is on its way), or None."""
        with self._ahead:
            self._ahead.wait_for(lambda: self._ahead_ready or self._ahead_left <= 0)
            return self._ahead_ready.pop(0) if self._ahead_ready else None

    def _stop_pinning_ahead(self) -> None:
        with self._ahead:
            self._ahead_left = 0
        if self._ahead_thread is not None:
            self._ahead_thread.join()
            self._ahead_thread = None
        self._ahead_ready.clear()

    @staticmethod
    def _bucket(nbytes: int) -> int:
        return -(-nbytes // 2**20)

    @property
    def pinned_bytes(self) -> int:
        return sum(slab.numel() for slab, _ in self._slabs)

    def take(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw buffer to give back later, a view of it with `like`'s shape, dtype and strides).

        The strides matter: a compiled consumer (the DPT heads' decode) guards on them, so a
        channels-last tensor that came back contiguous from the host recompiled it, once per
        layout and layer, in the middle of a long sequence's first run."""
        nbytes = like.numel() * like.element_size()
        free = self._free.get(self._bucket(nbytes))
        raw = free.pop() if free else self._carve(self._bucket(nbytes) * 2**20)
        strides = torch.empty_like(like, device="meta").stride()  # like's, when dense; else contiguous
        return raw, raw[:nbytes].view(like.dtype).as_strided(like.shape, strides)

    def _carve(self, size: int) -> torch.Tensor:
        for entry in self._slabs:
            slab, used = entry
            if used + size <= slab.numel():
                entry[1] += size
                return slab[used : used + size]
        ahead = self._slab_pinned_ahead() if size <= self.slab_bytes else None
        slab_size = max(self.slab_bytes, 1 << (size - 1).bit_length())
        self._slabs.append([ahead if ahead is not None else self._allocate(slab_size), size])
        return self._slabs[-1][0][:size]

    def give(self, raw: torch.Tensor) -> None:
        self._free.setdefault(self._bucket(raw.numel()), []).append(raw)

    def clear(self) -> None:
        self._stop_pinning_ahead()
        self._free.clear()
        self._slabs.clear()


class ActivationStore:
    def __init__(self, device: torch.device, budget_bytes: int, scratch_dir: str | None = None, device_bytes: int = 0):
        self.device = device
        self.budget_bytes = budget_bytes
        self.device_budget_bytes = device_bytes if device.type == "cuda" else 0
        self._on_device: dict[Hashable, torch.Tensor] = {}
        self.device_bytes = 0
        self._cuda = device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(device) if self._cuda else None
        self._pool = PinnedPool()
        # key -> (tensor, pinned buffer it lives in or None, event its copy from the GPU ends with)
        self._host: dict[Hashable, tuple[torch.Tensor, torch.Tensor | None, torch.cuda.Event | None]] = {}
        self._files: dict[Hashable, str] = {}
        self._scratch_parent = scratch_dir
        self._scratch: str | None = None
        self.host_bytes = 0
        self.peak_host_bytes = 0
        self.spilled_bytes = 0

    def expect(self, nbytes: int) -> None:
        """The caller will hold about `nbytes` at once: pin the host memory that takes beyond the
        GPU cache ahead, in the background (CUDA only; within the host budget)."""
        if self._cuda:
            self._pool.pin_ahead(min(self.budget_bytes, max(0, nbytes - self.device_budget_bytes)))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._cuda:
            self._copy_stream.synchronize()
        self._on_device.clear()
        self._host.clear()
        self._pool.clear()
        self._files.clear()
        self.host_bytes = 0
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _spill_path(self, key: Hashable) -> str:
        if self._scratch is None:
            if self._scratch_parent:
                os.makedirs(self._scratch_parent, exist_ok=True)
            self._scratch = tempfile.mkdtemp(prefix="zipmap-chunks-", dir=self._scratch_parent)
        return os.path.join(self._scratch, f"{abs(hash(key)):x}.pt")

    def put(self, key: Hashable, tensor: torch.Tensor) -> None:
        self.drop(key)
        nbytes = tensor.numel() * tensor.element_size()
        if self.device_bytes + nbytes <= self.device_budget_bytes:
            self._on_device[key] = tensor
            self.device_bytes += nbytes
            return
        if self.host_bytes + nbytes > self.budget_bytes:
            path = self._spill_path(key)
            torch.save(tensor.detach().cpu(), path)
            self._files[key] = path
            self.spilled_bytes += nbytes
            return
        if self._cuda:
            raw, host = self._pool.take(tensor)
            ready = torch.cuda.Event()
            ready.record()
            with torch.cuda.stream(self._copy_stream):
                self._copy_stream.wait_event(ready)
                host.copy_(tensor, non_blocking=True)
                tensor.record_stream(self._copy_stream)
                done = torch.cuda.Event()
                done.record()
            self._host[key] = (host, raw, done)
        else:
            self._host[key] = (tensor.detach().to("cpu", copy=tensor.device.type == "cpu"), None, None)
        self.host_bytes += nbytes
        self.peak_host_bytes = max(self.peak_host_bytes, self.host_bytes)

    def fetch(self, key: Hashable) -> Pending:
        if key in self._on_device:
            return Pending(self._on_device[key])
        if key in self._files:
            return Pending(torch.load(self._files[key]).to(self.device))
        host, _, done = self._host[key]
        if not self._cuda:
            return Pending(host.to(self.device))
        with torch.cuda.stream(self._copy_stream):
            self._copy_stream.wait_event(done)
            tensor = host.to(self.device, non_blocking=True)
            arrived = torch.cuda.Event()
            arrived.record()
        return Pending(tensor, arrived)

    def get(self, key: Hashable) -> torch.Tensor:
        return self.fetch(key).wait()

    def drop(self, key: Hashable) -> None:
        on_device = self._on_device.pop(key, None)
        if on_device is not None:
            self.device_bytes -= on_device.numel() * on_device.element_size()
        entry = self._host.pop(key, None)
        if entry is not None:
            self.host_bytes -= entry[0].numel() * entry[0].element_size()
            if entry[1] is not None:
                self._pool.give(entry[1])
        path = self._files.pop(key, None)
        if path is not None and os.path.exists(path):
            os.remove(path)
