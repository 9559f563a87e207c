"""Novel views of reconstructed scenes, rendered from the scene states a run stored.

A run with `scene_state.enabled` keeps every sequence's fast weights (`states/<id>.safetensors`).
The state-query model renders any camera from them, without the images:

    from pipeline import render_views
    views = render_views("s3://results/recon/<run>/states/<id>.safetensors", "cams.json")
    views.rgb, views.depth, views.confidence          # [K, H, W, 3], [K, H, W], [K, H, W]

`render_sequence` does the same for a sequence of a run and writes PNGs and MP4s (the CLI's
`zipmap-pipeline render`); `pipeline.render_job` renders many sequences on a Ray cluster.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .actors import load_model
from .errors import InputError, SpecError
from .layout import FRAMES, STATE, RunLayout
from .media import depth_range, depth_to_grey, mp4_bytes, png_bytes
from .redaction import get_logger
from .spec import ModelSpec, StorageSpec
from .storage import Store, join

logger = get_logger(__name__)

RENDER_RECORD = "render.json"  # written last: a render folder is complete once it exists


class CameraRequest(BaseModel):
    """Which views to render: a camera file, an orbit, or a path through the input cameras."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = None  # JSON (zipmap_core.query_cameras), path or fsspec URL
    orbit: int | None = Field(default=None, ge=1)  # views on a circle around the input cameras
    orbit_radius: float | None = Field(default=None, gt=0)  # default: the input cameras' spread
    interpolate: int | None = Field(default=None, ge=1)  # views from each input camera to the next

    @model_validator(mode="after")
    def _exactly_one(self) -> CameraRequest:
        if sum(x is not None for x in (self.file, self.orbit, self.interpolate)) != 1:
            raise ValueError("choose exactly one of cameras file, orbit and interpolate")
        return self


@dataclass
class RenderedViews:
    """Rendered views, stacked, float32 on the host."""

    cameras: Any  # zipmap_core.query_cameras.QueryCameras
    rgb: np.ndarray  # [K, H, W, 3] in (0, 1)
    depth: np.ndarray  # [K, H, W] > 0, the model's units
    confidence: np.ndarray  # [K, H, W] >= 1


def render_views(
    state_uri: str,
    cameras: Any,
    *,
    model: Any = None,
    storage: StorageSpec | None = None,
    device: str = "auto",
    batch_size: int = 8,
    dtype: str = "float32",
) -> RenderedViews:
    """Render `cameras` (a QueryCameras, its JSON dict, or a JSON file's path/URL; the size
    defaults to the input frames') from a stored scene state. Without `model`, the model that
    made the state is built from the state's record of it (preset and checkpoint)."""
    from zipmap_core.query_cameras import QueryCameras
    from zipmap_core.scene_state import SceneState

    storage = storage or StorageSpec()
    state = SceneState.load(state_uri, storage_options=storage.for_uri(state_uri))
    if not isinstance(cameras, QueryCameras):
        data = cameras if isinstance(cameras, dict) else _read_json(cameras, storage)
        cameras = _cameras(data, state.image_hw, cameras if isinstance(cameras, str) else "cameras")
    if model is None:
        model = model_of_state(state, storage, device)
    return _render(model, state, cameras, batch_size, dtype)


def model_of_state(state: Any, storage: StorageSpec, device: str = "auto") -> Any:
    """The model a pipeline-made state records (`metadata["model"]`: the job's model spec)."""
    if "model" not in state.metadata:
        raise SpecError("this scene state does not say which model made it: pass the model to render with")
    return load_model(ModelSpec.model_validate_json(state.metadata["model"]), storage, device)[0]


def _render(model: Any, state: Any, cameras: Any, batch_size: int, dtype: str) -> RenderedViews:
    from zipmap_core.engines.render import render_views as render

    views = list(render(model, state, cameras, batch_size=batch_size, dtype=dtype))
    return RenderedViews(
        cameras=cameras,
        rgb=np.stack([v.rgb for v in views]),
        depth=np.stack([v.depth for v in views]),
        confidence=np.stack([v.confidence for v in views]),
    )


def _read_json(uri: str, storage: StorageSpec) -> Any:
    store = Store(uri, storage)
    try:
        return json.loads(store.read_bytes(uri))
    except FileNotFoundError:
        raise InputError(f"camera file not found: {uri}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"camera file {uri} is not JSON: {exc}") from None


def _cameras(data: Any, default_hw: tuple[int, int], source: str) -> Any:
    from zipmap_core.query_cameras import QueryCameras

    try:
        return QueryCameras.from_dict(data, default_hw=default_hw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{source}: {exc}") from None


# --- a sequence of a run -----------------------------------------------------------------------


def render_sequence(
    run_uri: str,
    sequence_id: str,
    request: CameraRequest,
    *,
    out: str | None = None,
    model: Any = None,
    storage: StorageSpec | None = None,
    device: str = "auto",
    batch_size: int = 8,
    dtype: str = "float32",
    fps: int = 24,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Render views of one committed sequence of a run from its stored state and write them to
    `out` (default <run>/renders/<sequence>/): rgb/NNNNN.png, depth/NNNNN.png (inverse depth as
    grey levels), rgb.mp4, depth.mp4, cameras.json, and render.json last. Returns render.json."""
    from zipmap_core.query_cameras import interpolate, orbit
    from zipmap_core.scene_state import SceneState

    from .api import load_run_spec

    try:
        import av  # noqa: F401  (the MP4s; checked before any work)
    except ImportError as exc:
        raise SpecError(f"writing MP4s needs PyAV: pip install av, or the project's 'video' extra ({exc})") from None
    start = time.monotonic()
    run_uri = run_uri.rstrip("/")
    spec = load_run_spec(run_uri, storage=storage)
    store, layout = Store(run_uri, spec.storage), RunLayout(run_uri)
    outputs = _committed_outputs(store, layout, sequence_id)
    if STATE not in outputs:
        raise InputError(f"sequence {sequence_id!r} has no scene state: the run was made without scene_state.enabled")
    state = SceneState.load(outputs[STATE], storage_options=spec.storage.for_uri(outputs[STATE]))
    if request.file is not None:
        cameras = _cameras(_read_json(request.file, spec.storage), state.image_hw, request.file)
    elif state.extrinsics is None:
        raise InputError(f"the scene state of {sequence_id!r} holds no input cameras to place views around")
    elif request.orbit is not None:
        depth = _scene_depth(store, outputs[FRAMES])
        cameras = orbit(state.extrinsics, state.intrinsics, state.image_hw, request.orbit, depth, request.orbit_radius)
    else:
        cameras = interpolate(state.extrinsics, state.intrinsics, state.image_hw, request.interpolate)
    if model is None:
        model_spec = spec.model if checkpoint is None else spec.model.model_copy(update={"checkpoint": checkpoint})
        model = load_model(model_spec, spec.storage, device)[0]
    load_s = time.monotonic() - start
    views = _render(model, state, cameras, batch_size, dtype)
    render_s = time.monotonic() - start - load_s
    out = (out or join(layout.run_uri, "renders", sequence_id)).rstrip("/")
    record = write_views(views, out, Store(out, spec.storage), fps)
    record.update(
        {
            "run_uri": layout.run_uri,
            "sequence_id": sequence_id,
            "state_uri": outputs[STATE],
            "cameras": request.model_dump(exclude_none=True),
            "load_s": round(load_s, 3),
            "render_s": round(render_s, 3),
        }
    )
    Store(out, spec.storage).write_json(join(out, RENDER_RECORD), record)
    logger.info("rendered %d views of %s to %s in %.1fs", len(views.rgb), sequence_id, out, render_s)
    return record


def _committed_outputs(store: Store, layout: RunLayout, sequence_id: str) -> dict[str, str]:
    try:
        return store.read_json(layout.commit_marker(sequence_id))["outputs"]
    except FileNotFoundError:
        raise InputError(f"sequence {sequence_id!r} is not committed in {layout.run_uri}") from None


def _scene_depth(store: Store, frames_uri: str) -> float:
    """The median of the frames' median depths: how far ahead the orbit's centre lies."""
    medians = pq.read_table(io.BytesIO(store.read_bytes(frames_uri)), columns=["depth_median"])["depth_median"]
    valid = [m for m in medians.to_pylist() if m is not None and np.isfinite(m) and m > 0]
    if not valid:
        logger.warning("no valid depth in %s: the orbit looks 1 unit ahead", frames_uri)
        return 1.0
    return float(np.median(valid))


def write_views(views: RenderedViews, out: str, store: Store, fps: int) -> dict[str, Any]:
    """PNGs, MP4s and cameras.json of rendered views under `out`; returns what it wrote."""
    rgb = [(np.clip(x, 0, 1) * 255).round().astype(np.uint8) for x in views.rgb]
    lo, hi = depth_range(views.depth)
    grey = [depth_to_grey(d, lo, hi) for d in views.depth]
    for k, (colour, depth) in enumerate(zip(rgb, grey)):
        store.write_bytes(join(out, "rgb", f"{k:05d}.png"), png_bytes(colour))
        store.write_bytes(join(out, "depth", f"{k:05d}.png"), png_bytes(depth))
    store.write_bytes(join(out, "rgb.mp4"), mp4_bytes(rgb, fps))
    store.write_bytes(join(out, "depth.mp4"), mp4_bytes(grey, fps))
    store.write_json(join(out, "cameras.json"), views.cameras.to_dict())
    return {
        "views": len(rgb),
        "height": int(views.rgb.shape[1]),
        "width": int(views.rgb.shape[2]),
        "depth_grey_range": [lo, hi],  # grey 255 at depth lo (and nearer), 0 at hi (and farther)
        "files": {"rgb": "rgb/", "depth": "depth/", "rgb_video": "rgb.mp4", "depth_video": "depth.mp4"},
    }
