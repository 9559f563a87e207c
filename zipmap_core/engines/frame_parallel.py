"""One sequence over the G processes of a torch.distributed group, each owning a contiguous share.

The chunked engine reduces over frames in two places only: every TTT layer's fast-weight update
(a sum over tokens) and the camera head (attention over every frame's camera token). Everything
else (patch embedding, frame attention, the TTT read, the MLPs, the dense heads) is per frame. So
each process runs the chunked engine on its own frames and, per TTT layer, all-reduces its float32
update sums: every process then holds the same total, bit for bit, orthogonalises it with the
same kernels on the same inputs (identical fast weights everywhere) and applies it to its frames.
For the cameras the last layer's camera tokens (2C floats a frame) are all-gathered and every
process runs the camera head over all of them. The result is the one-process result up to the
order in which the update's terms are summed.

Each process yields the frames of its own share (with their global indices): dense maps never
cross processes, and whoever consumes them (a writer per process) scales with G. Gathering
every frame to one process would put the whole sequence's depth maps through one host.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def frame_shares(num_frames: int, processes: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) shares of `num_frames` over `processes`, in rank order; sizes
    differ by at most one frame (the first shares take the remainder)."""
    if processes < 1:
        raise ValueError(f"need at least one process, got {processes}")
    if num_frames < processes:
        raise ValueError(f"{num_frames} frame(s) cannot be shared by {processes} processes: each needs at least one")
    base, extra = divmod(num_frames, processes)
    shares, start = [], 0
    for rank in range(processes):
        stop = start + base + (rank < extra)
        shares.append((start, stop))
        start = stop
    return shares


@dataclass(frozen=True)
class FrameShard:
    """This process's share of a sequence (frames [start, stop) of `total`) and the collectives
    the chunked engine needs over the group. One process: the whole sequence, no collectives."""

    counts: tuple[int, ...]  # frames of every process, in rank order
    rank: int = 0
    group: Any = None  # the torch.distributed process group (None: the default group)
    comm_device: torch.device | None = None  # where collective buffers live (gloo: host, NCCL: GPU)

    @classmethod
    def whole(cls, num_frames: int) -> FrameShard:
        return cls((num_frames,))

    @property
    def processes(self) -> int:
        return len(self.counts)

    @property
    def start(self) -> int:
        return sum(self.counts[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.counts[self.rank]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def all_reduce_sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum float32 tensors over the processes, in place (one collective for all of them)."""
        if self.processes == 1:
            return
        if any(t.dtype != torch.float32 for t in tensors):
            raise TypeError("fast-weight update sums are all-reduced in float32")
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.comm_device)
        dist.all_reduce(flat, group=self.group)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def all_gather_frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B, this share's frames, ...] -> [B, all frames, ...] in float32 (lossless from bf16),
        in rank order, i.e. in sequence order."""
        if self.processes == 1:
            return x
        most = max(self.counts)
        padded = x.new_zeros((x.shape[0], most, *x.shape[2:]), dtype=torch.float32, device=self.comm_device)
        padded[:, : x.shape[1]] = x.float()
        parts = [torch.empty_like(padded) for _ in self.counts]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:, :n] for p, n in zip(parts, self.counts)], dim=1).to(x.device)


def group_size(group=None) -> int:
    """Processes in `group` (the default group when None); 1 without torch.distributed."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def exchange_shards(images: torch.Tensor, device: torch.device, group=None) -> FrameShard:
    """Every process's frame count and image shape, exchanged (a collective: call it in every
    process of the group), and checked identically everywhere, so that bad input raises the same
    error in every process instead of leaving the others waiting in a collective."""
    if group_size(group) == 1:
        return FrameShard.whole(images.shape[0])
    comm_device = torch.device("cpu") if dist.get_backend(group) == "gloo" else device
    mine = torch.tensor(list(images.shape) if images.dim() == 4 else [-1, 0, 0, 0])
    everyone = [torch.empty(4, dtype=torch.int64, device=comm_device) for _ in range(group_size(group))]
    dist.all_gather(everyone, mine.to(comm_device), group=group)
    shapes = [tuple(int(v) for v in t.cpu()) for t in everyone]
    malformed = [rank for rank, s in enumerate(shapes) if s[0] < 0]
    if malformed:
        raise ValueError(f"process(es) {malformed} of the frame-parallel group passed images that are not [S, 3, H, W]")
    empty = [rank for rank, s in enumerate(shapes) if s[0] == 0]
    if empty:
        raise ValueError(f"process(es) {empty} of the frame-parallel group hold no frames: every share needs one")
    if len({s[1:] for s in shapes}) > 1:
        raise ValueError(f"the processes' images differ in shape [3, H, W]: {[s[1:] for s in shapes]}")
    return FrameShard(tuple(s[0] for s in shapes), dist.get_rank(group), group, comm_device)


def spawn(
    fn: Callable[..., None], processes: int, *args: Any, backend: str | None = None, timeout_s: float = 1800
) -> None:
    """Run fn(rank, *args) in `processes` new processes of this host, each a member of one new
    torch.distributed group (NCCL with a GPU per process, else gloo): one sequence over the GPUs
    of a host from one command (torchrun does the same across hosts). A collective that waits
    longer than `timeout_s` fails; so does spawn if any process raises."""
    backend = backend or ("nccl" if torch.cuda.device_count() >= processes else "gloo")
    with tempfile.TemporaryDirectory(prefix="zipmap-group-") as tmp:
        rendezvous = f"file://{os.path.join(tmp, 'rendezvous')}"
        group = (fn, processes, backend, rendezvous, timeout_s, args)
        torch.multiprocessing.spawn(_in_group, group, nprocs=processes)


def _in_group(rank: int, fn, processes: int, backend: str, rendezvous: str, timeout_s: float, args: tuple) -> None:
    if backend == "nccl":
        torch.cuda.set_device(rank)
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(backend, init_method=rendezvous, rank=rank, world_size=processes, timeout=timeout)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()
