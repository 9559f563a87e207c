"""The long-lived model worker: one per GPU (or one CPU worker on a machine without GPUs).

The model is built and its checkpoint loaded once, in the worker's engine process
(pipeline.engine_process), which runs sequences one after another; each `process` call hands
one decoded sequence to it and writes the sequence's staged outputs. Calls overlap (a threaded
Ray actor): one sequence is written while the next computes and a third waits in the engine
process, so the accelerator never waits for a hand-off; within a sequence, frames are prepared
for writing (in `resources.frame_writers` processes) while later ones are still computed.
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
from .engine_process import EngineProcess, remove_stale_files
from .errors import ActorInitError, InfrastructureError, LongSequence, storage_error
from .layout import RunLayout
from .outputs import SequenceWriter, StagedOutputs, prepare_frame
from .overlap import frame_writers, map_in_processes
from .redaction import get_logger
from .spec import JobSpec, ModelSpec, StorageSpec
from .storage import Store
from .testing import faults

logger = get_logger(__name__)

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
    """Feeds one engine process (pipeline.engine_process: the model on one device) and writes
    what it computes. Wrapped with `ray.remote` by pipeline.execution."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        remove_stale_files()  # what a killed worker on this node left behind
        self._writers = frame_writers(spec.resources.frame_writer_processes)
        self._info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        self._engine_lock = threading.Lock()
        self._engine = EngineProcess(spec)
        self._init_error = self._engine.init_error
        self._info.update(self._engine.info)

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
        self.ready()
        if gang_min_frames is not None and decoded.num_frames >= gang_min_frames:
            raise LongSequence(decoded.num_frames)
        entered = time.time()
        layout = RunLayout(self._spec.run_uri)
        store = Store(self._spec.run_uri, self._spec.storage)
        writer = SequenceWriter(self._spec, source.sequence_id, decoded.frame_uris, decoded.source_sizes)
        on_state = writer.keep_state if self._spec.scene_state.enabled else None
        start = time.perf_counter()
        run = None
        try:
            # queued in the engine process at once: it starts the moment the sequence before ends
            run = self._live_engine().run(
                source.sequence_id, decoded.pixels, local_points=self._spec.engine.local_points, on_state=on_state
            )
            writer.engine = run.engine_settings()
            for prepared in map_in_processes(partial(prepare_frame, writer.frame_format), run.frames(), self._writers):
                writer.add_prepared(prepared)
                faults.crash_point(faults.ACTOR_CRASH_POINT, source.sequence_id)
            faults.write_delay()
            staged = writer.finish(store, layout, attempt_id)
        except BrokenProcessPool:
            # a writer process died (out of memory, killed): this attempt fails and is retried,
            # and the next one gets fresh processes
            self._writers = frame_writers(self._spec.resources.frame_writer_processes)
            raise
        finally:
            if run is not None:
                run.close()
            writer.close()
        infer_s = run.timings.get("infer_s", 0.0)
        write_s = time.perf_counter() - start - infer_s  # what writing added beyond inference
        return AttemptResult(
            sequence_id=source.sequence_id,
            attempt_id=attempt_id,
            staged=staged,
            timings={
                "decode_s": decoded.decode_s, "infer_s": infer_s, "write_s": write_s,
                "actor_entered": entered, **{k: v for k, v in run.timings.items() if k != "infer_s"},
            },
            worker=dict(self._info),
            engine=writer.engine,
        )

    def _live_engine(self) -> EngineProcess:
        """The engine process, started again if it died (its sequences failed and are retried)."""
        with self._engine_lock:
            if self._engine.dead is not None:
                logger.warning("model worker %s: %s; starting a new one", self._info["pid"], self._engine.dead)
                self._engine.close()
                self._engine = EngineProcess(self._spec)
                if self._engine.init_error is not None:
                    raise InfrastructureError(f"the engine process failed to start again: {self._engine.init_error}")
                self._info.update(self._engine.info)
            return self._engine
