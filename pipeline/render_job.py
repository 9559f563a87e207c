"""The render job: novel views of many sequences of a run, as a Ray batch over their stored states.

One model actor per GPU (or one CPU actor) builds the run's state-query model once; each call
renders one whole sequence (`pipeline.rendering.render_sequence`), so a sequence's state is
loaded once, by the actor that renders all its views in batches on its device. Sequences whose
render folder already holds `render.json` are skipped (a re-run continues where one stopped);
a lost actor is replaced and its sequence retried, a sequence without a state fails at once.

    zipmap-pipeline render-batch RUN_URI --orbit 60
    python -m jobs.render --spec render.yaml          # on a cluster (ray job submit)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .actors import load_model
from .cluster import connect
from .commit_record import read_commits
from .errors import InfrastructureError, SpecError
from .execution import classify, describe
from .layout import STATE, RunLayout
from .redaction import get_logger
from .rendering import RENDER_RECORD, CameraRequest, render_sequence
from .spec import StorageSpec, _describe_validation, _read_document, apply_overrides
from .storage import Store, join

logger = get_logger(__name__)


class RenderJobSpec(BaseModel):
    """A render job (YAML/JSON like a job spec; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str  # the run whose scene states to render (made with scene_state.enabled)
    cameras: CameraRequest
    sequences: list[str] | None = None  # None: every committed sequence with a scene state
    output: str | None = None  # renders go to <output>/<sequence>/ (default <run>/renders)
    overwrite: bool = False  # also re-render sequences that already have a render.json
    checkpoint: str | None = None  # the run's model checkpoint, if it moved since the run
    batch_size: int = Field(default=8, ge=1)  # views per pass on the device
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    fps: int = Field(default=24, ge=1)
    num_actors: int | None = Field(default=None, ge=1)  # None: one per GPU, or 1 CPU actor
    gpus_per_actor: float = Field(default=1.0, gt=0)
    cpus_per_actor: float = Field(default=1.0, ge=0)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    max_attempts: int = Field(default=2, ge=1)  # per sequence, for lost actors and store errors
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @property
    def output_uri(self) -> str:
        return (self.output or join(self.run.rstrip("/"), "renders")).rstrip("/")


def load_render_spec(source: str | Mapping[str, Any], overrides: Sequence[str] = ()) -> RenderJobSpec:
    data = dict(source) if isinstance(source, Mapping) else _read_document(source, {})
    try:
        return RenderJobSpec.model_validate(apply_overrides(data, overrides))
    except ValidationError as exc:
        raise SpecError(_describe_validation(exc).replace("job spec", "render job spec")) from None


class SceneRenderer:
    """One model on one device, rendering whole sequences. Wrapped with `ray.remote`."""

    def __init__(self, job: RenderJobSpec):
        from .api import load_run_spec

        self._job = job
        model_spec = load_run_spec(job.run, storage=job.storage).model
        if job.checkpoint is not None:
            model_spec = model_spec.model_copy(update={"checkpoint": job.checkpoint})
        self._model, self._device = load_model(model_spec, job.storage, job.device)

    def ready(self) -> str:
        return str(self._device)

    def render(self, sequence_id: str) -> dict[str, Any]:
        job = self._job
        return render_sequence(
            job.run,
            sequence_id,
            job.cameras,
            out=join(job.output_uri, sequence_id),
            model=self._model,
            storage=job.storage,
            batch_size=job.batch_size,
            dtype=job.dtype,
            fps=job.fps,
        )


def sequences_to_render(job: RenderJobSpec) -> tuple[list[str], list[str]]:
    """(sequences to render, sequences already rendered); unknown or state-less ones are errors."""
    store = Store(job.run, job.storage)
    layout = RunLayout(job.run.rstrip("/"))
    committed = read_commits(store, layout).committed  # the compact record: no GET per marker
    with_state = {sid for sid, r in committed.items() if STATE in r.output_kinds()}
    if job.sequences is None:
        if not with_state:
            raise SpecError(f"{job.run} has no committed sequence with a scene state (scene_state.enabled)")
        wanted = sorted(with_state)
    else:
        missing = [sid for sid in job.sequences if sid not in with_state]
        if missing:
            raise SpecError(f"not committed with a scene state in {job.run}: {', '.join(missing)}")
        wanted = list(dict.fromkeys(job.sequences))
    out = Store(job.output_uri, job.storage)
    done = [] if job.overwrite else [s for s in wanted if out.exists(join(job.output_uri, s, RENDER_RECORD))]
    return [s for s in wanted if s not in done], done


def run_render_job(job: RenderJobSpec, *, ray_address: str | None = None) -> dict[str, Any]:
    """Render every requested sequence; returns (and writes to <output>/render_summary.json) a
    summary: rendered, skipped and failed sequences, views and time."""
    start = time.monotonic()
    todo, skipped = sequences_to_render(job)
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    started_ray = False
    if todo:
        started_ray = connect(ray_address)
        try:
            _render_on_actors(job, todo, results, failures)
        finally:
            if started_ray:
                ray.shutdown()
    summary = {
        "run": job.run,
        "output": job.output_uri,
        "status": ("partial" if results or skipped else "failed") if failures else "succeeded",
        "rendered": sorted(results),
        "skipped": skipped,
        "failed": [{"sequence_id": sid, "error": err} for sid, err in sorted(failures.items())],
        "views": sum(r["views"] for r in results.values()),
        "render_s": round(sum(r["render_s"] for r in results.values()), 3),
        "elapsed_s": round(time.monotonic() - start, 3),
    }
    Store(job.output_uri, job.storage).write_json(join(job.output_uri, "render_summary.json"), summary)
    return summary


def _render_on_actors(job: RenderJobSpec, todo: list[str], results: dict, failures: dict) -> None:
    """Sequences go to whichever actor is free, one at a time each; results and errors land in
    `results` / `failures` by sequence."""
    gpus = float(ray.cluster_resources().get("GPU", 0))
    use_gpu = job.device == "cuda" or (job.device == "auto" and gpus > 0)
    count = job.num_actors or (max(1, int(gpus // job.gpus_per_actor)) if use_gpu else 1)
    actor_cls = ray.remote(SceneRenderer).options(
        num_gpus=job.gpus_per_actor if use_gpu else 0, num_cpus=job.cpus_per_actor, max_restarts=0
    )
    actors = [actor_cls.remote(job) for _ in range(min(count, len(todo)))]
    try:
        try:
            ray.get([a.ready.remote() for a in actors])
        except Exception as exc:
            raise InfrastructureError(f"render actors could not load the model: {describe(exc)}") from exc
        logger.info("rendering %d sequence(s) on %d actor(s)", len(todo), len(actors))
        _dispatch(job, todo, actors, actor_cls, results, failures)
    finally:
        for actor in actors:
            ray.kill(actor)


def _dispatch(job: RenderJobSpec, todo: list[str], actors: list, actor_cls: Any, results: dict, failures: dict):
    pending, attempts, running = list(todo), dict.fromkeys(todo, 0), {}
    while pending or running:
        for i, actor in enumerate(actors):
            if pending and not any(slot == i for slot, _ in running.values()):
                sid = pending.pop(0)
                attempts[sid] += 1
                running[actor.render.remote(sid)] = (i, sid)
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            i, sid = running.pop(ref)
            try:
                results[sid] = ray.get(ref)
                finished = len(results) + len(failures)
                logger.info("%s: %d views (%d of %d sequences)", sid, results[sid]["views"], finished, len(todo))
                continue
            except Exception as exc:
                kind, error = classify(exc), describe(exc)
            if kind == "actor_lost":
                actors[i] = actor_cls.remote(job)
            if kind == "input" or attempts[sid] >= job.max_attempts:
                logger.error("sequence %s failed: %s", sid, error)
                failures[sid] = error
            else:
                logger.warning("sequence %s: attempt %d failed (%s), retrying: %s", sid, attempts[sid], kind, error)
                pending.append(sid)
