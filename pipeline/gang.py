"""A gang of G model actors that reconstruct one sequence together (the frame-parallel engine).

One Ray placement group reserves the G actors' resources on one node at once (STRICT_PACK: all
or nothing, and NCCL then runs over the node's NVLink); the actors form a torch.distributed group
(rendezvous at rank 0's node address and a free port; NCCL on GPUs, gloo on CPUs) and each runs
`zipmap_core.engines.reconstruct_distributed` on its contiguous share of the sequence's frames.

In a run (`process`), every member also prepares its own frames for writing (rows, filtered
points, depth rows: the per-pixel work, spread over the gang) and rank 0 writes the sequence's
staged files with the same `SequenceWriter` a single model actor uses: its own frames first,
then the others' prepared frames, in order, through Ray's object store. With scene states on,
rank 0 keeps the whole sequence's state (trained from every member's frames: the engine's
all-reduced fast weights and gathered cameras), as a single actor does. So a gang attempt leaves
exactly the files a single actor's attempt leaves, for the coordinator to commit.
A failed sequence ends the gang (its members are killed): the caller starts a new one.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from .actors import AttemptResult, build_model
from .decode import DecodedSequence
from .discovery import SequenceSource
from .errors import ActorInitError
from .layout import RunLayout
from .outputs import PreparedFrame, SequenceWriter, prepare_frame
from .overlap import frame_writers, in_background, map_in_processes
from .spec import JobSpec
from .storage import Store
from .testing import faults


class GangMember:
    """One process of the gang: one model on one device. Wrapped with `ray.remote` by `Gang`."""

    def __init__(self, spec: JobSpec, rank: int, size: int):
        self._spec, self.rank, self.size = spec, rank, size
        import ray

        self._info: dict[str, Any] = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid()}
        if ray.is_initialized():  # the GPUs Ray gave this member (CUDA_VISIBLE_DEVICES)
            self._info["gpus"] = [str(g) for g in ray.get_gpu_ids()]
        self._init_error: str | None = None
        self._writers = frame_writers(spec.resources.frame_writer_processes)
        try:
            self._model, self._device = build_model(spec)
            self._info["device"] = str(self._device)
        except Exception as exc:  # reported by info(): a broken checkpoint must stop the run
            self._init_error = f"{type(exc).__name__}: {exc}"

    def info(self) -> dict[str, Any]:
        """Raises ActorInitError if the model could not be built; else describes the member."""
        if self._init_error is not None:
            raise ActorInitError(f"gang member on {self._info['host']} failed to start: {self._init_error}")
        return dict(self._info)

    def rendezvous_address(self) -> str:
        """Rank 0: where the others meet it (this node's address, a port free right now)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def join(self, address: str, timeout_s: float) -> None:
        import torch.distributed as dist

        backend = "nccl" if self._device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=address, rank=self.rank, world_size=self.size, timeout=timedelta(seconds=timeout_s)
        )

    def reconstruct(self, images, keep_state: bool = False) -> tuple[list, Any]:
        """This member's share of the sequence -> (its FramePredictions, indices in the whole
        sequence; with `keep_state`, the whole sequence's SceneState, else None)."""
        engine = self._spec.engine.model_copy(update={"mode": "chunked", "frame_parallel": self.size})
        states: list = []
        frames = list(self._frames(images, engine, on_state=states.append if keep_state else None))
        return frames, (states[0] if states else None)  # "auto" decided by the engine, from every share

    def process(
        self, source: SequenceSource, decoded: DecodedSequence, attempt_id: str, others: list | None = None
    ) -> AttemptResult | list[PreparedFrame]:
        """Run this member's share of one sequence. Rank 0 (`others`: the other members' result refs,
        in rank order) writes the attempt's staged files and returns its AttemptResult; the other
        ranks return their prepared frames."""
        import ray

        from zipmap_core.engines import frame_shares

        self.info()
        start = time.perf_counter()
        shares = frame_shares(decoded.num_frames, self.size)
        begin, stop = shares[self.rank]
        images = decoded.images(begin, stop)
        engine = self._engine(decoded.num_frames, images.shape[-2:], max(b - a for a, b in shares))
        writer = SequenceWriter(self._spec, source.sequence_id, decoded.frame_uris, decoded.source_sizes)
        writer.engine = {**engine.settings(), "frame_parallel": self.size}
        timer = {"infer_s": 0.0}
        on_state = writer.keep_state if self._spec.scene_state.enabled and self.rank == 0 else None
        try:
            frames = self._frames(images, engine, timer, on_state)
            mine = map_in_processes(partial(prepare_frame, writer.frame_format), frames, self._writers)
            if self.rank:
                prepared = []
                for frame in mine:
                    prepared.append(frame)
                    faults.crash_point(faults.ACTOR_CRASH_POINT, source.sequence_id)
                return prepared
            for frame in mine:
                writer.add_prepared(frame)
                faults.crash_point(faults.ACTOR_CRASH_POINT, source.sequence_id)
            for ref in others or []:
                for frame in ray.get(ref):
                    writer.add_prepared(frame)
            faults.write_delay()
            store, layout = Store(self._spec.run_uri, self._spec.storage), RunLayout(self._spec.run_uri)
            staged = writer.finish(store, layout, attempt_id)
        finally:
            writer.close()
        return AttemptResult(
            sequence_id=source.sequence_id,
            attempt_id=attempt_id,
            staged=staged,
            timings={
                "decode_s": decoded.decode_s,
                "infer_s": timer["infer_s"],
                "write_s": time.perf_counter() - start - timer["infer_s"],
            },
            worker={**self._info, "gang": self.size},
            engine=writer.engine,
        )

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def _engine(self, total: int, hw, largest_share: int):
        """The spec's engine, chunked over the gang, with "auto" decided as for one process running
        the whole sequence: identically in every member (zipmap_core.engines.reconstruct_distributed)."""
        from zipmap_core.engines.auto import resolve_engine

        engine = self._spec.engine.model_copy(update={"mode": "chunked", "frame_parallel": self.size})
        return resolve_engine(engine, self._model, total, tuple(hw), self._device, run_frames=largest_share)

    def _frames(self, images, engine, timer: dict | None = None, on_state=None):
        """This member's frames, computed in a background thread (the collectives run between them)."""
        import torch

        from zipmap_core.engines import reconstruct_distributed

        def infer():
            with torch.inference_mode():
                begin = time.perf_counter()
                yield from reconstruct_distributed(
                    self._model, images, engine, device=self._device, on_state=on_state
                )
                if timer is not None:
                    timer["infer_s"] = time.perf_counter() - begin

        return in_background(infer, max_ahead=2 * engine.chunk_size)


class GangCancelled(Exception):
    """A gang's start was called off (`Gang(cancel=...)`)."""


class Gang:
    """G members placed together. `reconstruct(images, on_state=None)` runs one sequence on all of
    them and returns its frames (and hands over its scene state); `submit` runs one pipeline
    attempt. A failed sequence ends the gang (its members are killed): start a new one to go on."""

    def __init__(
        self,
        spec: JobSpec,
        size: int,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        timeout_s: float = 600,
        collective_timeout_s: float | None = None,
        cancel: threading.Event | None = None,
        on_no_room: Callable[[], None] | None = None,
        keep_waiting: Callable[[], bool] | None = None,
    ):
        """Waits up to `timeout_s` for room and for the members to start; a collective that waits
        longer than `collective_timeout_s` (default: timeout_s) fails, so a lost peer cannot hang
        the others forever. Setting `cancel` (from another thread) ends a start that still waits
        within a second: GangCancelled, nothing left behind.

        Room: `on_no_room()` is called once if the placement group is not placed within a second;
        while `keep_waiting()` says so (another gang of the run is up), the wait for room has no
        deadline (each `timeout_s` that passes asks it again)."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.members = []
        self._cancel = cancel
        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {}), **(resources or {})}
        self._group = placement_group([bundle] * size, strategy="STRICT_PACK")
        try:
            self._get(self._group.ready(), timeout_s, on_slow=on_no_room, keep_waiting=keep_waiting)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self._group)
            raise TimeoutError(f"no node had room for a gang of {size} x {bundle} within {timeout_s:g} s") from None
        except GangCancelled:
            ray.util.remove_placement_group(self._group)
            raise
        member = ray.remote(GangMember)
        env = {"runtime_env": env} if (env := faults.ray_runtime_env()) else {}  # tests only
        try:
            for rank in range(size):
                strategy = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=rank)
                self.members.append(
                    member.options(
                        num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, max_restarts=0,
                        scheduling_strategy=strategy, **env,
                    ).remote(spec, rank, size)
                )
            self.info = self._get([m.info.remote() for m in self.members], timeout_s)
            address = self._get(self.members[0].rendezvous_address.remote(), timeout_s)
            collective_s = collective_timeout_s or timeout_s
            self._get([m.join.remote(address, collective_s) for m in self.members], timeout_s)
        except Exception:
            self.shutdown()
            raise

    def _get(self, refs, timeout_s: float, on_slow=None, keep_waiting=None):
        """ray.get(refs, timeout=timeout_s), looking at `cancel` every second; `on_slow()` once
        when not done within a second; a new `timeout_s` each time `keep_waiting()` says so."""
        import ray

        deadline = time.monotonic() + timeout_s
        waiting = refs if isinstance(refs, list) else [refs]
        while True:
            left = deadline - time.monotonic()
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=max(0.0, min(1.0, left)))
            if waiting and left <= 0 and keep_waiting is not None and keep_waiting():
                deadline, left = time.monotonic() + timeout_s, timeout_s
            if not waiting or left <= 0:
                return ray.get(refs, timeout=0 if waiting else None)
            if self._cancel is not None and self._cancel.is_set():
                raise GangCancelled("the gang's start was cancelled")
            if on_slow is not None:
                on_slow()
                on_slow = None

    @property
    def size(self) -> int:
        return len(self.members)

    def submit(self, source: SequenceSource, decoded: Any, attempt_id: str) -> tuple[Any, list[Any]]:
        """One attempt on every member (`decoded`: a DecodedSequence or a ref to one): (rank 0's
        AttemptResult ref, every member's ref). Wait for all of them: a member that fails leaves
        the others waiting in a collective until the gang is shut down."""
        rest = [m.process.remote(source, decoded, attempt_id) for m in self.members[1:]]
        first = self.members[0].process.remote(source, decoded, attempt_id, rest)
        return first, [first, *rest]

    def reconstruct(self, images, on_state: Callable[[Any], None] | None = None) -> list[Any]:
        """images [S, 3, H, W] -> every frame's FramePrediction, in order (S >= the gang's size).
        `on_state`, if given, is called once with the whole sequence's SceneState, as
        `zipmap_core.reconstruct(..., on_state=)` does for one process: rank 0 keeps it (the
        fast-weight updates are all-reduced, the cameras gathered: one process's state up to
        summation order)."""
        import ray

        from zipmap_core.engines import frame_shares

        shares = frame_shares(len(images), len(self.members))
        refs = [
            m.reconstruct.remote(images[a:b], on_state is not None and rank == 0)
            for rank, (m, (a, b)) in enumerate(zip(self.members, shares))
        ]
        pending = list(refs)
        try:
            while pending:  # the first failure ends the gang: the others would wait in a collective
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done[0])
        except Exception:
            self.shutdown()
            raise
        parts = ray.get(refs)
        if on_state is not None:
            on_state(parts[0][1])
        return [frame for frames, _ in parts for frame in frames]

    def shutdown(self) -> None:
        import ray

        for m in self.members:
            ray.kill(m, no_restart=True)
        ray.util.remove_placement_group(self._group)
