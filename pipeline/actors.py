"""The long-lived model worker: one per GPU (or one CPU worker on a machine without GPUs).

The model is built and its checkpoint loaded once, in `__init__`; each `process` call then
runs one decoded sequence through the engine and writes the sequence's staged outputs. Calls
may overlap (a threaded Ray actor) but inference is serialised by a lock, so one sequence's
writing and upload overlap the next one's inference without two sequences sharing the
accelerator; within a sequence, frames are prepared for writing (in `resources.frame_writers`
processes) while later ones are still computed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .decode import DecodedSequence
from .discovery import SequenceSource
from .errors import ActorInitError, InfrastructureError, LongSequence, storage_error
from .layout import RunLayout
from .outputs import SequenceWriter, StagedOutputs, prepare_frame
from .overlap import frame_writers, in_background, map_in_processes, remove_stale_scratch
from .spec import JobSpec, ModelSpec, StorageSpec
from .storage import Store
from .testing import faults

RANDOM_WEIGHTS_SEED = 0  # every worker must hold the same weights, or retries would differ


@dataclass
class AttemptResult:
    """What a finished attempt reports back to the coordinator."""

    sequence_id: str
    attempt_id: str
    staged: StagedOutputs
    timings: dict[str, float] = field(default_factory=dict)  # decode_s, infer_s, write_s
    worker: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # the settings it ran with ("auto" resolved)


def build_model(spec: JobSpec):
    """The spec's model with its weights, in eval mode on its device: (model, device)."""
    return load_model(spec.model, spec.storage, spec.resources.device)


def load_model(model_spec: ModelSpec, storage: StorageSpec, device: str = "auto"):
    """A model spec's model with its weights, in eval mode on `device` (auto | cuda | cpu)."""
    import torch

    from zipmap_core.checkpoint import load_checkpoint
    from zipmap_core.models.zipmap import ZipMap

    device = _pick_device(device, torch)
    if model_spec.checkpoint is None:
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
    model = ZipMap(model_spec.config())
    if model_spec.checkpoint is not None:
        load_checkpoint(
            model,
            model_spec.checkpoint,
            storage_options=storage.for_uri(model_spec.checkpoint),
            use_ema=model_spec.use_ema,
        )
    return model.to(device).eval(), device


def check_checkpoint(spec: JobSpec) -> None:
    """The checkpoint exists and is readable, checked by the driver before a run folder or a cluster
    exists: a model actor would find out only after Ray started."""
    from zipmap_core.checkpoint import CheckpointError, check_checkpoint_file

    uri = spec.model.checkpoint
    if uri is None:
        return
    try:
        check_checkpoint_file(uri, storage_options=spec.storage.for_uri(uri))
    except FileNotFoundError:
        raise InfrastructureError(f"model.checkpoint not found: {uri}") from None
    except CheckpointError as exc:
        raise InfrastructureError(f"model.checkpoint: {exc}") from None
    except Exception as exc:  # the store failed us (credentials, endpoint)
        raise storage_error(exc, uri, endpoint_url=spec.storage.endpoint_url, doing="read the checkpoint") from exc


def _pick_device(wanted: str, torch):
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("resources.device is 'cuda' but this worker sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


class ModelWorker:
    """Holds one model on one device. Wrapped with `ray.remote` by pipeline.execution."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._lock = threading.Lock()
        self._writers = frame_writers(spec.resources.frame_writer_processes)
        remove_stale_scratch()  # what a killed worker on this node left behind
        self._init_error: str | None = None
        self._info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        self._frames_run: dict[tuple[int, int], int] = {}  # frames this worker ran per image size
        try:
            self._model, self._device = build_model(spec)
            self._info["device"] = str(self._device)
        except Exception as exc:  # reported by ready(): a broken checkpoint must stop the run
            self._init_error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> dict[str, Any]:
        """Raises ActorInitError if the model could not be built; else describes the worker."""
        if self._init_error is not None:
            raise ActorInitError(f"model worker on {self._info['host']} failed to start: {self._init_error}")
        return dict(self._info)

    def process(
        self, source: SequenceSource, decoded: DecodedSequence, attempt_id: str, gang_min_frames: int | None = None
    ) -> AttemptResult:
        """Reconstruct one sequence and write its outputs to this attempt's staging folder (or hand
        it back, if it has at least `gang_min_frames` frames: a gang runs it)."""
        import torch

        from zipmap_core.engines import reconstruct

        self.ready()
        if gang_min_frames is not None and decoded.num_frames >= gang_min_frames:
            raise LongSequence(decoded.num_frames)
        layout = RunLayout(self._spec.run_uri)
        store = Store(self._spec.run_uri, self._spec.storage)
        writer = SequenceWriter(self._spec, source.sequence_id, decoded.frame_uris, decoded.source_sizes)
        infer_s = 0.0
        start = time.perf_counter()
        try:
            images = decoded.images()  # outside the lock: overlaps the previous sequence
            engine = self._engine_for(images)

            def infer():
                # the engine runs in its own thread and holds the accelerator only while it
                # computes; frames it has finished wait here (offline: they are all on the host
                # already; chunked/streaming: at most two chunks ahead, to bound host memory)
                nonlocal infer_s, engine
                with self._lock, torch.inference_mode():
                    faults.delay()
                    if engine.fast and getattr(self._model, "_compiled_for_inference", False):
                        engine = engine.model_copy(update={"compile": True})  # compiled for good meanwhile
                        writer.engine = engine.settings()
                    begin = time.perf_counter()
                    on_state = writer.keep_state if self._spec.scene_state.enabled else None
                    yield from reconstruct(self._model, images, engine, device=self._device, on_state=on_state)
                    infer_s = time.perf_counter() - begin

            writer.engine = engine.settings()
            ahead = 0 if engine.mode == "offline" else 2 * max(engine.chunk_size, engine.window or 1)
            frames = in_background(infer, max_ahead=ahead)
            for prepared in map_in_processes(partial(prepare_frame, writer.frame_format), frames, self._writers):
                writer.add_prepared(prepared)
                faults.crash_point(faults.ACTOR_CRASH_POINT, source.sequence_id)
            staged = writer.finish(store, layout, attempt_id)
        except BrokenProcessPool:
            # a writer process died (out of memory, killed): this attempt fails and is retried,
            # and the next one gets fresh processes
            self._writers = frame_writers(self._spec.resources.frame_writer_processes)
            raise
        finally:
            writer.close()
        write_s = time.perf_counter() - start - infer_s  # what writing added beyond inference
        return AttemptResult(
            sequence_id=source.sequence_id,
            attempt_id=attempt_id,
            staged=staged,
            timings={"decode_s": decoded.decode_s, "infer_s": infer_s, "write_s": write_s},
            worker=dict(self._info),
            engine=writer.engine,
        )

    def _engine_for(self, images):
        """The spec's engine with "auto" decided for this sequence (zipmap_core.engines.auto). What
        this worker already ran at this image size counts towards the run's length: a run of many
        sequences compiles once it has run enough frames to pay the compilation back."""
        from zipmap_core.engines.auto import resolve_engine

        hw, n = tuple(images.shape[-2:]), images.shape[0]
        self._frames_run[hw] = run_frames = self._frames_run.get(hw, 0) + n
        engine = self._spec.engine.model_copy(update={"frame_parallel": 1})  # gangs run long sequences (gang.py)
        return resolve_engine(engine, self._model, n, hw, self._device, run_frames=run_frames)
