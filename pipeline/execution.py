"""Ray plumbing: sizing and starting model actors, submitting work.

A sequence becomes two chained Ray calls: a CPU task decodes it, and the model actor's
`process` takes the decoded object as its argument, so Ray starts decoding the next sequence
while the actor is still busy with the previous one. Which failures mean what is decided in
`classify`; what to do about them is the coordinator's business.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import ray
from ray.exceptions import RayActorError, RayTaskError

from .actors import ModelWorker
from .cluster import connect
from .decode import decode_sequence, decode_threads
from .discovery import SequenceSource
from .errors import ActorInitError, InputError, LongSequence, SpecError
from .redaction import get_logger, redact_text
from .spec import JobSpec
from .testing import faults

logger = get_logger(__name__)

FailureKind = Literal["input", "actor_lost", "init", "transient", "gang"]
# `process` calls an actor runs at once: one sequence writing, one computing in the engine process
# and one queued there with its frames in place, so the engine never waits for the one being
# written to make room (with 2, the third entered only once the first was written, often after
# the second had finished computing). Further in-flight sequences wait in the actor's queue with
# their decoding done, not in its memory.
ACTOR_CONCURRENCY = 3
# Decoding a 1080p H.264 video into 518-wide model input costs about 45 ms of CPU a frame (FFmpeg
# 8, RGB 10, bicubic resize 26; bench/video_throughput.py on the H200 host) and the bf16 fast path
# takes 92 frames/s on one H200: 4.2 cores. A decode task of 4 CPUs turns frames into input on 4
# threads (pipeline.decode), so a sequence is decoded about as fast as the GPU computes it.
DECODE_CPUS_PER_GPU = 4


@dataclass(frozen=True)
class ActorPlan:
    """How many model actors to run and what each one reserves."""

    num_actors: int
    num_gpus: float
    num_cpus: float
    resources: dict[str, float]
    decode_cpus: float = 1.0  # per decode task: resources.decode_cpus, or what `decode_cpus_for` chose

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0


def plan_actors(spec: JobSpec, cluster_resources: dict[str, float], fixed_size: bool = False) -> ActorPlan:
    """One actor per GPU (resources.gpus_per_actor each), or CPU actors when there is no GPU.

    On a cluster that cannot grow (`fixed_size`, e.g. the local one a run starts itself),
    actors that would reserve every CPU are refused: decode tasks could then never be
    scheduled and the run would wait forever.
    """
    res = spec.resources
    gpus = float(cluster_resources.get("GPU", 0))
    use_gpu = res.device == "cuda" or (res.device == "auto" and gpus > 0)
    if use_gpu:
        default = max(1, int(gpus // res.gpus_per_actor))
        plan = ActorPlan(res.num_actors or default, res.gpus_per_actor, res.cpus_per_actor, dict(res.custom_resources))
    else:
        plan = ActorPlan(res.num_actors or 1, 0.0, res.cpus_per_actor, dict(res.custom_resources))
    cpus = float(cluster_resources.get("CPU", 0))
    plan = replace(plan, decode_cpus=res.decode_cpus or decode_cpus_for(plan, cpus))
    if plan.num_actors * plan.num_cpus + plan.decode_cpus > cpus:
        starved = (
            f"{plan.num_actors} model actor(s) x {plan.num_cpus:g} CPUs (resources.cpus_per_actor) leave less than "
            f"resources.decode_cpus={plan.decode_cpus:g} of this cluster's {cpus:g} CPUs for decoding"
        )
        if fixed_size:
            raise SpecError(f"{starved}; lower cpus_per_actor or num_actors")
        # a joined cluster may have an autoscaler; if it has none, decoding waits forever
        logger.warning("%s: the run waits until the cluster grows; if it cannot, lower cpus_per_actor or num_actors",
                       starved)
    return plan


def decode_cpus_for(plan: ActorPlan, cluster_cpus: float) -> int:
    """CPUs per decode task when the spec leaves them to the run (resources.decode_cpus: null).

    On GPUs, DECODE_CPUS_PER_GPU, so that one sequence decodes about as fast as a GPU computes it
    and the sequences decoded ahead are ready in time; fewer when the CPUs beside the actors,
    shared by every actor's decode tasks, are fewer (never below 1). On CPUs only, 1: the model
    actors' engines need the rest.
    """
    if not plan.uses_gpu:
        return 1
    spare_per_actor = (cluster_cpus - plan.num_actors * plan.num_cpus) / max(1, plan.num_actors)
    return int(min(DECODE_CPUS_PER_GPU, max(1, spare_per_actor)))


class Executor(Protocol):
    """What the coordinator needs from a cluster (`RayExecutor`; a fake in bench/coordinator_scale.py)."""

    plan: ActorPlan
    gang_plan: Any  # pipeline.gang_phase.GangPlan, or None: every sequence on one actor

    def start_actor(self) -> tuple[Any, Any]: ...
    def submit(
        self, actor: Any, source: SequenceSource, attempt_id: str, gang_min_frames: int | None = None
    ) -> tuple[Any, Any]: ...
    def decode(self, source: SequenceSource) -> Any: ...
    def wait(self, refs: list[Any], timeout: float) -> list[Any]: ...
    def get(self, ref: Any) -> Any: ...
    def cancel(self, ref: Any) -> None: ...
    def kill(self, actor: Any) -> None: ...
    def describe_resources(self) -> str: ...


@contextmanager
def ray_executor(spec: JobSpec, address: str | None = None) -> Iterator[RayExecutor]:
    """A RayExecutor on the cluster at `address` (or a local one, shut down again afterwards)."""
    started = connect(address, spec.resources.ray_connect_timeout_s)
    try:
        from .gang_phase import plan_gang

        plan = plan_actors(spec, ray.cluster_resources(), fixed_size=started)  # a cluster we started cannot grow
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        gang_plan = plan_gang(spec, nodes, plan, fixed_size=started)
        logger.info(
            "starting %d model actor(s) (gpus=%s cpus=%s each); decode tasks of %g CPUs%s", plan.num_actors,
            plan.num_gpus, plan.num_cpus, plan.decode_cpus, "" if spec.resources.decode_cpus else " (auto)",
        )
        yield RayExecutor(spec, plan, gang_plan)
    finally:
        if started:
            ray.shutdown()


class RayExecutor:
    """Starts actors and submits sequences; the only module that talks to Ray's task API."""

    def __init__(self, spec: JobSpec, plan: ActorPlan, gang_plan: Any = None):
        self._spec = spec
        self.plan = plan
        self.gang_plan = gang_plan
        self._actor_cls = ray.remote(ModelWorker).options(
            num_gpus=plan.num_gpus,
            num_cpus=plan.num_cpus,
            resources=plan.resources or None,
            max_concurrency=ACTOR_CONCURRENCY,
            max_restarts=0,  # a dead actor is replaced by the coordinator, with a fresh handle
            **({"runtime_env": env} if (env := faults.ray_runtime_env()) else {}),  # tests only
        )
        self._decode = ray.remote(decode_sequence).options(
            num_cpus=plan.decode_cpus,
            max_retries=0,  # the coordinator owns retries (with backoff and attempt counts)
        )
        self._spec_ref = ray.put(spec)

    def describe_resources(self) -> str:
        """What one actor and one decode task ask for, against what the cluster has and has free."""
        plan = self.plan
        actor = {"CPU": plan.num_cpus, "GPU": plan.num_gpus, **plan.resources}
        asks = {k: v for k, v in actor.items() if v}
        return (
            f"{plan.num_actors} model actor(s) ask for {_resources(asks)} each, a decode task for "
            f"CPU {plan.decode_cpus:g}; the cluster has {_resources(ray.cluster_resources())}, "
            f"free now {_resources(ray.available_resources())}"
        )

    def start_actor(self) -> tuple[Any, ray.ObjectRef]:
        """A new actor and the ref that resolves once its model is loaded."""
        actor = self._actor_cls.remote(self._spec_ref)
        return actor, actor.ready.remote()

    def submit(
        self, actor: Any, source: SequenceSource, attempt_id: str, gang_min_frames: int | None = None
    ) -> tuple[ray.ObjectRef, ray.ObjectRef]:
        """Decode on a CPU task, then process on `actor`; returns (decode ref, result ref).
        `gang_min_frames`: the actor hands back (LongSequence) a sequence that turns out this long."""
        decoded = self.decode(source)
        return decoded, actor.process.remote(source, decoded, attempt_id, gang_min_frames)

    def decode(self, source: SequenceSource) -> ray.ObjectRef:
        """A CPU task that decodes one sequence (its result goes to the actor(s) that run it)."""
        return self._decode.remote(source, self._spec_ref, threads=decode_threads(self.plan.decode_cpus))

    @staticmethod
    def wait(refs: list[ray.ObjectRef], timeout: float) -> list[ray.ObjectRef]:
        """Refs among `refs` that are finished, waiting up to `timeout` for the first one."""
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return ready

    @staticmethod
    def get(ref: ray.ObjectRef) -> Any:
        return ray.get(ref)

    @staticmethod
    def cancel(ref: ray.ObjectRef) -> None:
        try:
            ray.cancel(ref)
        except Exception as exc:  # already finished
            logger.debug("cancel: %s", exc)

    @staticmethod
    def kill(actor: Any) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception as exc:  # already gone
            logger.debug("kill actor: %s", exc)


def _resources(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(resources.items()) if not k.startswith(("node:", "accelerator_type:"))}
    names = ("memory", "object_store_memory")
    return "{" + ", ".join(f"{k} {v / 2**30:.1f} GiB" if k in names else f"{k} {v:g}" for k, v in shown.items()) + "}"


def cause_of(exc: BaseException) -> BaseException:
    """What was raised in the task or actor (not Ray's wrapper)."""
    return exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc


def classify(exc: BaseException) -> FailureKind:
    """What a failure means for the sequence (see pipeline.errors)."""
    cause = cause_of(exc)
    if isinstance(cause, InputError):
        return "input"
    if isinstance(cause, ActorInitError):
        return "init"
    if isinstance(cause, LongSequence):
        return "gang"  # not a failure: the sequence goes to the gang lane
    if isinstance(exc, RayActorError):
        return "actor_lost"
    return "transient"  # lost nodes/objects, crashed workers, I/O errors: worth another try


def describe(exc: BaseException) -> str:
    """A one-line error for the manifest (the cause, not Ray's wrapper and traceback)."""
    cause = cause_of(exc)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return redact_text(f"{type(cause).__name__}: {lines[0] if lines else ''}")[:2000]
