"""A gang of G model actors that reconstruct one sequence together (the frame-parallel engine).

One Ray placement group reserves the G actors' resources on one node at once (STRICT_PACK: all
or nothing, and NCCL then runs over the node's NVLink); the actors form a torch.distributed group
(rendezvous at rank 0's node address and a free port; NCCL on GPUs, gloo on CPUs) and each runs
`zipmap_core.engines.reconstruct_distributed` on its contiguous share of the sequence's frames.
The frames come back to the caller in sequence order.

The coordinator does not use it yet: every sequence still runs on one model actor, and
`engine.frame_parallel` > 1 is refused in a job spec. It is the building block for the pipeline's
long sequences (a gang started for sequences longer than a threshold, each member writing its own
share's outputs); README, "One sequence on several GPUs".
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from .actors import build_model
from .spec import JobSpec


class GangMember:
    """One process of the gang: one model on one device. Wrapped with `ray.remote` by `Gang`."""

    def __init__(self, spec: JobSpec, rank: int, size: int):
        self._spec, self.rank, self.size = spec, rank, size
        self._model, self._device = build_model(spec)

    def info(self) -> dict[str, Any]:
        return {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "device": str(self._device)}

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

    def reconstruct(self, images) -> list:
        """This member's share of the sequence -> its FramePredictions (indices in the whole sequence)."""
        import torch

        from zipmap_core.engines import reconstruct_distributed

        engine = self._spec.engine.model_copy(update={"mode": "chunked", "frame_parallel": self.size})
        with torch.inference_mode():
            return list(reconstruct_distributed(self._model, images, engine, device=self._device))

    def leave(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class Gang:
    """G members placed together; `reconstruct(images)` runs one sequence on all of them. A failed
    sequence ends the gang (its members are killed): start a new one to go on."""

    def __init__(
        self, spec: JobSpec, size: int, *, num_cpus: float = 1, num_gpus: float = 0, timeout_s: float = 600
    ):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": num_cpus, **({"GPU": num_gpus} if num_gpus else {})}
        self._group = placement_group([bundle] * size, strategy="STRICT_PACK")
        try:
            ray.get(self._group.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self._group)
            raise TimeoutError(f"no node had room for a gang of {size} x {bundle} within {timeout_s:g} s") from None
        member = ray.remote(GangMember)
        self.members = [
            member.options(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=rank),
            ).remote(spec, rank, size)
            for rank in range(size)
        ]
        try:
            address = ray.get(self.members[0].rendezvous_address.remote(), timeout=timeout_s)
            ray.get([m.join.remote(address, timeout_s) for m in self.members], timeout=timeout_s)
        except Exception:
            self.shutdown()
            raise

    def reconstruct(self, images) -> list[Any]:
        """images [S, 3, H, W] -> every frame's FramePrediction, in order (S >= the gang's size)."""
        import ray

        from zipmap_core.engines import frame_shares

        shares = frame_shares(len(images), len(self.members))
        refs = [m.reconstruct.remote(images[a:b]) for m, (a, b) in zip(self.members, shares)]
        pending = list(refs)
        try:
            while pending:  # the first failure ends the gang: the others would wait in a collective
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done[0])
        except Exception:
            self.shutdown()
            raise
        return [frame for part in ray.get(refs) for frame in part]

    def shutdown(self) -> None:
        import ray

        for m in self.members if hasattr(self, "members") else []:
            ray.kill(m)
        ray.util.remove_placement_group(self._group)
