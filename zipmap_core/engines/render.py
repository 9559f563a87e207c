"""Novel views from a stored scene state: ray conditions of query cameras through fast weights
that are only read, then the novel-view head. No input image is needed.

Cost per view: the 24 frame blocks and a read-only pass through each TTT layer over one view's
tokens (about what a reconstruction spends on one input frame, without the fast-weight update
and the camera/depth heads), then the novel-view DPT head. Views are independent, so they are
rendered `batch_size` at a time on the device, and the result does not depend on the batching.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from zipmap_core.engines.frames import host_arrays
from zipmap_core.engines.precision import DTYPES, autocast, resolve_device, weights_dtype
from zipmap_core.geometry import invert_rigid
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.query_cameras import QueryCameras
from zipmap_core.rays import effective_intrinsics, plucker_rays
from zipmap_core.scene_state import SceneState


@dataclass(frozen=True)
class RenderedView:
    """One rendered query view, float32 arrays on the host."""

    index: int  # position among the cameras rendered
    rgb: np.ndarray  # [H, W, 3] in (0, 1)
    depth: np.ndarray  # [H, W] > 0, in the model's units
    confidence: np.ndarray  # [H, W] >= 1 (1 + exp), as the depth head's

    def rgb_uint8(self) -> np.ndarray:
        return (np.clip(self.rgb, 0.0, 1.0) * 255).round().astype(np.uint8)


@torch.inference_mode()
def render_views(
    model: ZipMap,
    state: SceneState,
    cameras: QueryCameras,
    *,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    check_model: bool = True,
) -> Iterator[RenderedView]:
    """Render `cameras` from `state` with the state-query `model` that made it, `batch_size`
    views per pass, under `dtype` autocast (float32: exact). Views stream out in order."""
    if not model.config.enable_nvs:
        raise ValueError(f"model {model.config.name!r} cannot render novel views: use a state-query preset")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    p = model.config.patch_size
    if cameras.image_hw[0] % p or cameras.image_hw[1] % p:
        raise ValueError(f"render size {cameras.image_hw} is not a multiple of the patch size {p}")
    if check_model:
        state.check_model(model)
    held = weights_dtype(model)
    if held != torch.float32 and held != DTYPES[dtype]:
        name = next(n for n, d in DTYPES.items() if d == held)
        raise ValueError(f"this model's weights were cast to {name} for the fast path: render with dtype={name!r}")
    device = resolve_device(device, model)
    model.eval()
    # read in the compute dtype once, not per batch (fast weights stay float32 unless autocast)
    states = state.to(device, torch.float32 if dtype == "float32" else DTYPES[dtype]).layers
    cam_to_world = invert_rigid(cameras.extrinsics.float())
    intrinsics = effective_intrinsics(cameras.intrinsics.float(), cameras.image_hw)  # over all views: the quirk
    for start in range(0, len(cameras), batch_size):
        batch = slice(start, start + batch_size)
        rays = plucker_rays(cam_to_world[batch].to(device), intrinsics[batch].to(device), cameras.image_hw)
        with autocast(device, dtype):
            out = model.render(rays.unsqueeze(0), states)
        pred, conf = host_arrays(out["nvs_pred"][0].float(), out["nvs_depth_conf"][0].float())
        for k in range(pred.shape[0]):
            yield RenderedView(start + k, pred[k, ..., :3], pred[k, ..., 3], conf[k])
