"""The job spec: everything a run needs, as one typed, validated, serialisable object.

A spec is loaded from YAML/JSON, adjusted with dotted `key.sub=value` overrides from the command
line, and stored (secrets redacted) next to the run's outputs so `resume` can continue it later.
Credentials never live in a spec: the object store clients read them from the environment
(AWS_ACCESS_KEY_ID, ...), and options that look like credentials are rejected.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import fsspec
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from zipmap_core.assets import bundled_preset
from zipmap_core.config import ModelConfig
from zipmap_core.engines.config import EngineConfig

from .errors import SpecError, storage_error
from .exports.options import ExportOptions, unique_formats
from .names import check_run_id
from .redaction import SECRET_NAME, redact, redact_uri
from .report.options import ReportSpec

REVEAL_SECRETS = "reveal_secrets"  # serialisation context key for in-process, unredacted copies
PATCH = 14


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrameSampling(_Section):
    """Which frames of a sequence the model sees, applied in this order: fps, stride, max_frames.

    The spec's `input:` section sets it for every sequence; a manifest table may override any
    field per sequence (columns of the same names). See pipeline.sampling for the exact rule.
    """

    # Frames per second to sample with the released demo's rule (None: every frame). Videos take
    # their rate from the container; image folders sample by fps only when `image_fps` is known.
    fps: float | None = Field(default=None, gt=0)
    image_fps: float | None = Field(default=None, gt=0)  # the capture rate of image folders
    frame_stride: int = Field(default=1, ge=1)  # then keep every k-th frame
    max_frames: int | None = Field(default=None, ge=1)  # then keep at most this many
    spread: Literal["first", "uniform"] = "first"  # max_frames: the first N, or N evenly spread


# Pixels per source frame above which a frame is bad input (2**27: a 108 MP phone photo fits; a
# decoded RGB frame of that size takes 384 MiB). Pillow refuses more than 2 * 89.5 M in any case.
DEFAULT_MAX_PIXELS = 2**27


class InputSpec(FrameSampling):
    """Where the sequences come from (a prefix to scan, or a manifest table), and which frames."""

    prefix: str | None = None  # folders of images and video files at any depth under it
    manifest: str | None = None  # parquet/csv with a `uri` column (optional `sequence_id`, sampling columns)
    min_frames: int = Field(default=2, ge=1)  # shorter sequences (after sampling) fail as bad input
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)  # larger frames fail as bad input, undecoded

    @model_validator(mode="after")
    def _one_source(self) -> InputSpec:
        if (self.prefix is None) == (self.manifest is None):
            raise ValueError("set exactly one of input.prefix and input.manifest")
        return self

    @property
    def sampling(self) -> FrameSampling:
        """The frame selection every sequence gets unless its manifest row overrides it."""
        return FrameSampling.model_validate({k: getattr(self, k) for k in FrameSampling.model_fields})


class ModelSpec(_Section):
    preset: str  # a name accepted by zipmap_core.config.ModelConfig.preset
    # local path or fsspec URL (.pt/.pth/.safetensors), or bundled:<preset> for the weights shipped
    # with the package (bundled:demo_ttt, bundled:demo_attention)
    checkpoint: str | None = None
    use_ema: bool = False
    allow_random_weights: bool = False  # tests only, and only with the "tiny" preset

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        ModelConfig.preset(name)  # raises ValueError naming the known presets
        return name

    @model_validator(mode="after")
    def _weights(self) -> ModelSpec:
        if self.checkpoint is None and not (self.preset == "tiny" and self.allow_random_weights):
            raise ValueError(
                "model.checkpoint is required; random weights are only allowed with "
                "preset 'tiny' and model.allow_random_weights: true (for tests)"
            )
        bundled = bundled_preset(self.checkpoint) if self.checkpoint else None
        if bundled is not None and bundled != self.preset:
            raise ValueError(
                f"model.checkpoint {self.checkpoint!r} holds the weights of preset {bundled!r}, not {self.preset!r}"
            )
        return self

    def config(self) -> ModelConfig:
        return ModelConfig.preset(self.preset)


class PreprocessSpec(_Section):
    """The model input geometry (see zipmap_core.images.preprocess_images)."""

    size: int = Field(default=518, gt=0)
    mode: Literal["crop", "pad"] = "crop"

    @field_validator("size")
    @classmethod
    def _patch_multiple(cls, size: int) -> int:
        if size % PATCH:
            raise ValueError(f"preprocess.size must be a multiple of {PATCH}, got {size}")
        return size


class PointCloudSpec(_Section):
    enabled: bool = True
    # Absolute: the depth head's confidence is 1 + exp(x) >= 1, so 1.0 keeps every finite point.
    conf_threshold: float = 1.0
    # Relative, as the released demo filters (its default 50): keep the points at or above this
    # percentile of the confidences of the whole sequence's points (those passing conf_threshold).
    # null or 0: off.
    confidence_percentile: float | None = Field(default=50.0, ge=0, le=100)
    voxel_size: float | None = Field(default=None, gt=0)  # average points per voxel when set


class SceneStateSpec(_Section):
    """Keep each sequence's scene state (its TTT fast weights, zipmap_core.scene_state) next to its
    outputs, to render novel views later without the images. Needs a state-query model."""

    enabled: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"  # 576 MiB / 288 MiB per sequence at full size


class ResourcesSpec(_Section):
    num_actors: int | None = Field(default=None, ge=1)  # None: one per GPU, or 1 CPU actor
    gpus_per_actor: float = Field(default=1.0, gt=0)  # used when the cluster has GPUs
    cpus_per_actor: float = Field(default=1.0, ge=0)
    # Processes beside each model actor that turn frames into rows and points while the engine
    # computes the next ones. None: all of the actor's CPUs but the engine's own, so 0 with the
    # default single CPU (frames are then prepared in the actor itself).
    frame_writers: int | None = Field(default=None, ge=0)
    # CPUs per decode task: FFmpeg's threads, and the threads that turn frames into model input
    # (pipeline.decode). null: chosen per run (pipeline.execution.decode_cpus_for): 4 with GPUs, as
    # far as the CPUs beside the actors allow (a 1080p video costs an H200 about 4.2 cores), else 1.
    decode_cpus: float | None = Field(default=None, gt=0)
    # Sequences handed to one actor at a time: one computing, one queued at its engine, one writing,
    # the rest decoding or decoded and waiting, so the next is ready when the accelerator frees. Bounds
    # decoded frames in memory.
    max_in_flight_per_actor: int = Field(default=4, ge=1)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    custom_resources: dict[str, float] = Field(default_factory=dict)  # extra Ray resources per actor
    # Give up when no model actor has started after this long (autoscalers may need minutes).
    actor_start_timeout_s: float = Field(default=1800.0, gt=0)
    # Give up when work is waiting but nothing happened for this long: no sequence finished or
    # failed and no actor started (e.g. decode tasks that no node can schedule). The error says
    # what the run asks for and what the cluster has. Raise it for sequences that take longer.
    progress_timeout_s: float = Field(default=1800.0, gt=0)
    # Give up when the Ray cluster to join does not answer within this long (exit code 3).
    ray_connect_timeout_s: float = Field(default=60.0, gt=0)
    # Sequences of at least this many frames (after sampling) run on a gang of
    # engine.frame_parallel actors, one sequence over their GPUs (pipeline.gang_phase). Below a few
    # thousand frames one H200 takes under 20 s a sequence (2000 frames: 17.5 s, 2 GPUs 9.2 s),
    # about what starting a gang costs (G actors load the model, join a process group, compile);
    # from 5000 frames (47 s on one H200, 24 s on two) a gang saves more than it costs.
    gang_min_frames: int = Field(default=5000, ge=2)

    @property
    def frame_writer_processes(self) -> int:
        if self.frame_writers is not None:
            return self.frame_writers
        return max(0, int(self.cpus_per_actor) - 1)


class RetrySpec(_Section):
    max_attempts: int = Field(default=3, ge=1)
    backoff_s: float = Field(default=2.0, ge=0)  # delay before attempt 2; doubles each time
    max_backoff_s: float = Field(default=120.0, ge=0)

    def delay(self, failed_attempts: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, failed_attempts - 1))


class StorageSpec(_Section):
    """fsspec options for every URI of the run. No credentials: those come from the environment.

    On S3 every request is retried by botocore's "standard" mode (500/502/503/504, SlowDown and
    other throttling, time-outs, dropped connections) with exponential backoff and jitter (at most
    20 s between attempts), up to `max_attempts` attempts; s3fs's own retry loop is switched off
    (pipeline.storage.Store), so these are all the attempts. A stalled request is abandoned after
    `read_timeout_s` without a byte, so one request gives up after at most about
    max_attempts * (read_timeout_s + 20 s): about 4 minutes with the defaults.
    """

    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto, ...)
    region: str | None = None
    anon: bool = False
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)  # a request with no response byte for this long is retried
    max_attempts: int = Field(default=5, ge=1)  # per S3 request, first attempt included
    options: dict[str, Any] = Field(default_factory=dict)  # extra fsspec/s3fs options (win over the above)

    @field_validator("options")
    @classmethod
    def _no_credentials(cls, options: dict[str, Any]) -> dict[str, Any]:
        found = secret_keys(options)
        if found:
            raise ValueError(
                f"storage.options must not hold credentials ({', '.join(found)}); "
                "set them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...)"
            )
        return options

    def for_uri(self, uri: str) -> dict[str, Any]:
        """The storage_options to pass to fsspec for `uri`."""
        protocol = fsspec.utils.get_protocol(uri)
        opts = dict(self.options)
        if protocol in ("s3", "s3a"):
            if self.endpoint_url:
                opts.setdefault("endpoint_url", self.endpoint_url)
            if self.region:
                client = dict(opts.get("client_kwargs", {}))
                client.setdefault("region_name", self.region)
                opts["client_kwargs"] = client
            if self.anon:
                opts.setdefault("anon", True)
            config = dict(opts.get("config_kwargs", {}))
            config.setdefault("connect_timeout", self.connect_timeout_s)
            config.setdefault("read_timeout", self.read_timeout_s)
            config.setdefault("retries", {"max_attempts": self.max_attempts, "mode": "standard"})
            opts["config_kwargs"] = config
        return opts


class DriverSpec(_Section):
    """How the driver guards and reports a run: its lease on the run folder and its progress."""

    # The driver rewrites <run>/_lease/<n>.json this often: its lease on the run (one driver per
    # run) and the live progress `status` reports.
    heartbeat_s: float = Field(default=2.0, gt=0)
    # A driver whose heartbeat is older than this is dead: `status` says so and `resume` may
    # take the run over (at once when the dead driver ran on the same host).
    lease_expiry_s: float = Field(default=60.0, gt=0)
    # A progress line this often when stderr is not a terminal (a terminal gets a live bar).
    progress_interval_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _expiry_spans_heartbeats(self) -> DriverSpec:
        if self.lease_expiry_s < 2 * self.heartbeat_s:
            raise ValueError("driver.lease_expiry_s must be at least twice driver.heartbeat_s")
        return self


class JobSpec(_Section):
    """A complete, validated job: inputs, model, engine, outputs, resources, retries, storage."""

    input: InputSpec
    output: str  # runs are written under <output>/<run_id>/
    run_id: str | None = None  # None: a fresh time-stamped id
    model: ModelSpec
    engine: EngineConfig = Field(default_factory=EngineConfig)
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    point_cloud: PointCloudSpec = Field(default_factory=PointCloudSpec)
    save_depth: bool = False  # per-frame depth + confidence maps as a Parquet table
    exports: list[ExportOptions] = Field(default_factory=list)  # colmap, nerfstudio (pipeline.exports)
    report: ReportSpec = Field(default_factory=ReportSpec)  # previews per sequence, report.html per run
    scene_state: SceneStateSpec = Field(default_factory=SceneStateSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    driver: DriverSpec = Field(default_factory=DriverSpec)

    @model_validator(mode="before")
    @classmethod
    def _no_fault_hooks(cls, data: Any) -> Any:
        """Specs stored by earlier versions hold `faults: null`; a set one is refused (test hooks
        are switched on by pipeline.testing.faults, never by a spec)."""
        if isinstance(data, Mapping) and "faults" in data:
            if data["faults"] is not None:
                raise ValueError("faults: fault injection is for tests only and cannot be set in a job spec")
            data = {k: v for k, v in data.items() if k != "faults"}
        return data

    @field_validator("run_id")
    @classmethod
    def _safe_run_id(cls, run_id: str | None) -> str | None:
        if run_id is not None:
            try:
                check_run_id(run_id)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        return run_id

    @field_validator("exports")
    @classmethod
    def _one_of_each(cls, exports: list) -> list:
        return unique_formats(exports)

    @field_validator("output")
    @classmethod
    def _strip_slash(cls, output: str) -> str:
        return output.rstrip("/") or output

    @model_validator(mode="after")
    def _engine_fits_model(self) -> JobSpec:
        """Settings every sequence would fail on are spec errors, not per-sequence retries."""
        model = self.model.config()
        if self.engine.mode in ("chunked", "streaming") and model.global_block != "ttt":
            raise ValueError(f"engine.mode {self.engine.mode!r} needs a TTT model; preset {model.name!r} is not one")
        if self.scene_state.enabled and not model.enable_nvs:
            raise ValueError(
                f"scene_state.enabled keeps states to render novel views from: preset {model.name!r} has no "
                "novel-view head (use a state-query preset, e.g. 'state_query')"
            )
        if self.scene_state.enabled and self.engine.mode == "streaming":
            raise ValueError("scene_state.enabled needs engine.mode 'offline' or 'chunked' (one update of all frames)")
        if self.engine.mode == "streaming" and self.engine.window is None and model.streaming_window is None:
            raise ValueError(
                f"engine.mode 'streaming' needs engine.window: preset {model.name!r} has no default window"
            )
        if self.engine.frame_parallel not in (1, "auto"):
            gang = f"engine.frame_parallel={self.engine.frame_parallel} (a gang of actors per long sequence)"
            if model.global_block != "ttt":
                raise ValueError(f"{gang} needs a TTT model; preset {model.name!r} is not one")
            if self.resources.gang_min_frames < self.engine.frame_parallel:
                raise ValueError(
                    f"{gang}: resources.gang_min_frames={self.resources.gang_min_frames} must be at least "
                    f"{self.engine.frame_parallel} (every member needs a frame)"
                )
        return self

    @model_serializer(mode="wrap")
    def _redacting(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if isinstance(info.context, dict) and info.context.get(REVEAL_SECRETS):
            return data  # in-process copies only; never written or logged
        return redact(data)

    def __repr__(self) -> str:
        return f"JobSpec({json.dumps(self.model_dump(mode='json'), sort_keys=True)})"

    __str__ = __repr__

    def updated(self, **changes: Any) -> JobSpec:
        """A validated copy with top-level fields replaced (secrets preserved)."""
        data = self.model_dump(mode="json", context={REVEAL_SECRETS: True})
        data.update(changes)
        try:
            return JobSpec.model_validate(data)
        except ValidationError as exc:
            raise SpecError(_describe_validation(exc)) from None

    def result_fields(self) -> dict[str, Any]:
        """The parts of the spec that shape the outputs; a run must keep them to stay consistent."""
        data = self.model_dump(mode="json")
        keep = {"model", "engine", "preprocess", "point_cloud", "save_depth", "scene_state"}
        result = {k: v for k, v in data.items() if k in keep}
        # where activations live, and over how many GPUs the long sequences spread, change the
        # summation order at most: a run resumed on other machines may change them
        result["engine"] = {k: v for k, v in result["engine"].items() if k not in RESOURCE_ENGINE_FIELDS}
        result["input"] = {k: data["input"][k] for k in ("min_frames", *FrameSampling.model_fields)}
        return result

    def with_storage_default(self, storage: StorageSpec | None) -> JobSpec:
        """This spec, with `storage` (from the command line) if it sets no storage of its own."""
        if storage is None or storage == StorageSpec() or self.storage != StorageSpec():
            return self
        return self.updated(storage=storage.model_dump(mode="json"))

    def with_run_id(self, run_id: str | None = None) -> JobSpec:
        """A copy with a definite run id (the given one, the spec's own, or a fresh one)."""
        return self.model_copy(update={"run_id": check_run_id(run_id or self.run_id or new_run_id())})

    @property
    def run_uri(self) -> str:
        if self.run_id is None:
            raise SpecError("the spec has no run_id yet; call with_run_id() first")
        return f"{self.output}/{check_run_id(self.run_id)}"

    def to_json(self) -> str:
        """The resolved spec with secrets redacted, as stored in <run>/spec.json."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


RESOURCE_ENGINE_FIELDS = ("gpu_cache_gb", "host_memory_budget_gb", "scratch_dir", "frame_parallel")


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


# --- loading ---------------------------------------------------------------------------------


def load_spec(
    source: str | Mapping[str, Any] | JobSpec,
    overrides: Sequence[str] = (),
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> JobSpec:
    """Build a JobSpec from a YAML/JSON file (path or fsspec URL) or a dict, plus overrides.

    Raises SpecError with every validation problem listed, so the CLI can exit with code 2.
    """
    if isinstance(source, JobSpec):
        data: Any = source.model_dump(mode="json", context={REVEAL_SECRETS: True})
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data = _read_document(source, storage_options or {})
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_describe_validation(exc)) from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML: numbers, booleans, null, lists)."""
    result = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"override {item!r} is not of the form key.sub=value")
        parts = [p.strip() for p in key.split(".")]
        if any(not p for p in parts):
            raise SpecError(f"override {item!r} has an empty key segment")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"override {item!r}: cannot parse value: {exc}") from None
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _read_document(source: str, storage_options: Mapping[str, Any]) -> Any:
    try:
        with fsspec.open(source, "rt", encoding="utf-8", **storage_options) as f:
            text = f.read()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {redact_uri(source)}") from None
    except OSError as exc:
        if fsspec.utils.get_protocol(source) != "file":
            raise storage_error(exc, source, endpoint_url=storage_options.get("endpoint_url"), doing="read") from exc
        raise SpecError(f"cannot read spec {redact_uri(source)}: {exc}") from None
    except Exception as exc:  # an object store client's own errors (no credentials, unreachable endpoint)
        raise storage_error(exc, source, endpoint_url=storage_options.get("endpoint_url"), doing="read") from exc
    try:
        return json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot parse spec {redact_uri(source)}: {exc}") from None


def _describe_validation(exc: ValidationError) -> str:
    lines = ["invalid job spec:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(spec)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


# --- credentials ---------------------------------------------------------------------------


def secret_keys(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of entries (at any depth) whose key looks like a credential."""
    found = []
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(key, str) and SECRET_NAME.search(key):
            found.append(name)
        elif isinstance(value, Mapping):
            found.extend(secret_keys(value, f"{name}."))
    return found
