"""Depth, camera and point-cloud metrics of a predicted sequence against its ground truth.

Predictions are only defined up to a similarity (the model's world frame and scale are its
own), so every metric first aligns: depth by a median scale, cameras and points by Sim(3).
All computation is float64 on the CPU; inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from zipmap_core.geometry import resized_intrinsics, unproject_depth

from .alignment import Sim3, umeyama
from .neighbors import nearest_distances

DepthAlignment = Literal["frame", "sequence", "none"]
NAN = float("nan")
METRIC_NAMES = (
    "depth_abs_rel",
    "depth_delta_1_25",
    "ate",
    "rpe_trans",
    "rpe_rot_deg",
    "pc_accuracy",
    "pc_completeness",
    "pc_chamfer",
)


def as_tensor(x: Any, dtype: torch.dtype = torch.float64) -> Tensor:
    """A CPU tensor of `dtype` from a numpy array, tensor or nested list."""
    if isinstance(x, Tensor):
        return x.detach().to("cpu", dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


# ---- depth ------------------------------------------------------------------------------------


def depth_metrics(
    pred: Any, gt: Any, valid: Any | None = None, alignment: DepthAlignment = "frame"
) -> dict[str, float]:
    """AbsRel and delta < 1.25 over valid ground-truth pixels of depth maps [S, H, W].

    The prediction is first scaled by median(gt) / median(pred) over the valid pixels of each
    frame ("frame"), of the whole sequence ("sequence"), or not at all ("none"). Pixels are
    pooled over the sequence; non-positive predictions count as (very) wrong, not as missing.
    """
    pred, gt = as_tensor(pred), as_tensor(gt)
    mask = torch.isfinite(gt) & (gt > 0)
    if valid is not None:
        mask &= as_tensor(valid, torch.bool)
    pred = torch.nan_to_num(pred, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(1e-6)
    if not mask.any():
        return {"abs_rel": NAN, "delta_1_25": NAN}

    def median_scale(p: Tensor, g: Tensor) -> float:
        return float(g.median() / p.median()) if p.numel() else 1.0

    if alignment == "frame":
        scales = torch.tensor([median_scale(p[m], g[m]) for p, g, m in zip(pred, gt, mask)], dtype=torch.float64)
        pred = pred * scales[:, None, None]
    elif alignment == "sequence":
        pred = pred * median_scale(pred[mask], gt[mask])
    elif alignment != "none":
        raise ValueError(f"unknown depth alignment {alignment!r}")
    p, g = pred[mask], gt[mask]
    ratio = torch.maximum(p / g, g / p)
    return {"abs_rel": float(((p - g).abs() / g).mean()), "delta_1_25": float((ratio < 1.25).double().mean())}


# ---- cameras ----------------------------------------------------------------------------------


def camera_centres(extrinsics: Tensor) -> Tensor:
    """World positions [S, 3] of camera-from-world extrinsics [S, 3, 4]."""
    rotation, translation = extrinsics[:, :, :3], extrinsics[:, :, 3:]
    return -(rotation.transpose(-1, -2) @ translation).squeeze(-1)


def rotation_angle_deg(rotation: Tensor) -> Tensor:
    """Angles of rotation matrices [..., 3, 3] in degrees (atan2 form: accurate near 0)."""
    skew = rotation - rotation.transpose(-1, -2)
    sin = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], dim=-1).norm(dim=-1) / 2
    cos = (rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.atan2(sin, cos))


def _relative_motions(extrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Camera i+1 from camera i: rotations [S-1, 3, 3] and translations [S-1, 3]."""
    r, t = extrinsics[:, :, :3], extrinsics[:, :, 3]
    rel_r = r[1:] @ r[:-1].transpose(-1, -2)
    rel_t = t[1:] - (rel_r @ t[:-1].unsqueeze(-1)).squeeze(-1)
    return rel_r, rel_t


def align_cameras(pred_extrinsics: Any, gt_extrinsics: Any) -> Sim3:
    """The Sim(3) taking predicted camera centres onto the ground-truth ones."""
    return umeyama(camera_centres(as_tensor(pred_extrinsics)), camera_centres(as_tensor(gt_extrinsics)))


def camera_metrics(pred_extrinsics: Any, gt_extrinsics: Any) -> dict[str, float]:
    """ATE, RPE translation and RPE rotation (degrees) of camera-from-world extrinsics [S, 3, 4].

    ATE is the RMSE of camera centres after the Sim(3) Umeyama alignment of predicted to GT
    centres. RPE compares consecutive relative motions; relative motions do not depend on the
    world frame, so of the alignment only its scale enters (on the translations). RPE is NaN for
    a single frame. Motionless predictions align with scale 0: ATE is then the GT spread.
    """
    pred, gt = as_tensor(pred_extrinsics), as_tensor(gt_extrinsics)
    if pred.shape != gt.shape:
        raise ValueError(f"extrinsics shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    sim = align_cameras(pred, gt)
    residual = sim.apply(camera_centres(pred)) - camera_centres(gt)
    out = {"ate": float(residual.pow(2).sum(-1).mean().sqrt()), "sim3_scale": sim.scale}
    if pred.shape[0] < 2:
        return {**out, "rpe_trans": NAN, "rpe_rot_deg": NAN}
    pred_r, pred_t = _relative_motions(pred)
    gt_r, gt_t = _relative_motions(gt)
    out["rpe_trans"] = float((sim.scale * pred_t - gt_t).norm(dim=-1).mean())
    out["rpe_rot_deg"] = float(rotation_angle_deg(gt_r.transpose(-1, -2) @ pred_r).mean())
    return out


# ---- point clouds -----------------------------------------------------------------------------


def pointcloud_metrics(
    pred_points: Any, gt_points: Any, *, max_points: int = 10_000, seed: int = 0, align: bool = True
) -> dict[str, float]:
    """Accuracy (pred -> nearest GT) and completeness (GT -> nearest pred), mean distances.

    `pred_points` and `gt_points` [N, 3] correspond row by row (the same pixels), which gives the
    Sim(3) alignment without any registration; both sets are then subsampled to `max_points`
    (same random pixels, seeded) before the nearest-neighbour searches.
    """
    pred, gt = as_tensor(pred_points).reshape(-1, 3), as_tensor(gt_points).reshape(-1, 3)
    keep = torch.isfinite(pred).all(-1) & torch.isfinite(gt).all(-1)
    pred, gt = pred[keep], gt[keep]
    if pred.shape[0] == 0:
        return {"accuracy": NAN, "completeness": NAN, "chamfer": NAN}
    if pred.shape[0] > max_points:
        pick = torch.randperm(pred.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        pred, gt = pred[pick], gt[pick]
    if align:
        pred = umeyama(pred, gt).apply(pred)
    accuracy = float(nearest_distances(pred, gt).mean())
    completeness = float(nearest_distances(gt, pred).mean())
    return {"accuracy": accuracy, "completeness": completeness, "chamfer": (accuracy + completeness) / 2}


# ---- whole sequences --------------------------------------------------------------------------


def ground_truth_arrays(gt: Any) -> dict[str, Tensor]:
    """depth, valid, extrinsics, intrinsics, world_points of a `SyntheticSequence` or a dict
    (as `read_ground_truth` returns; missing world points are unprojected from depth)."""
    if not isinstance(gt, Mapping):
        gt = {k: getattr(gt, k) for k in ("depth", "valid", "extrinsics", "intrinsics", "world_points")}
    depth = as_tensor(gt["depth"])
    valid = as_tensor(gt["valid"], torch.bool) if gt.get("valid") is not None else depth > 0
    out = {
        "depth": depth,
        "valid": valid,
        "extrinsics": as_tensor(gt["extrinsics"]),
        "intrinsics": as_tensor(gt["intrinsics"]),
    }
    if gt.get("world_points") is not None:
        out["world_points"] = as_tensor(gt["world_points"])
    else:
        out["world_points"] = unproject_depth(depth, out["extrinsics"], out["intrinsics"])
    return out


def match_resolution(depth: Tensor, intrinsics: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
    """Depth [S, h, w] resampled (nearest) to `size` = (H, W), with intrinsics rescaled to match.

    Exact when the prediction was made on a plain resize of the ground-truth images (the model's
    "crop" preprocessing of an image whose size is a multiple of 14 needs no crop).
    """
    h, w = depth.shape[-2:]
    if (h, w) == tuple(size):
        return depth, intrinsics
    resized = torch.nn.functional.interpolate(depth[:, None], size=size, mode="nearest-exact")[:, 0]
    if intrinsics is None:
        return resized, None
    return resized, resized_intrinsics(intrinsics, size[1] / w, size[0] / h)


def evaluate_sequence(
    pred: Mapping[str, Any],
    gt: Any,
    *,
    depth_alignment: DepthAlignment = "frame",
    max_points: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics of one sequence, NaN where the prediction lacks what a metric needs.

    `pred`: extrinsics [S, 3, 4] camera-from-world, intrinsics [S, 3, 3], depth [S, H, W] and
    optionally world_points [S, H, W, 3] (otherwise unprojected from depth with the predicted
    cameras). `gt`: a `SyntheticSequence` or a dict as `read_ground_truth` returns. Points are
    compared over the valid ground-truth pixels.
    """
    g = ground_truth_arrays(gt)
    out = dict.fromkeys(METRIC_NAMES, NAN)
    extrinsics = as_tensor(pred["extrinsics"]) if pred.get("extrinsics") is not None else None
    intrinsics = as_tensor(pred["intrinsics"]) if pred.get("intrinsics") is not None else None
    depth = as_tensor(pred["depth"]) if pred.get("depth") is not None else None
    num_frames = g["depth"].shape[0]
    for name, x in (("extrinsics", extrinsics), ("intrinsics", intrinsics), ("depth", depth)):
        if x is not None and x.shape[0] != num_frames:
            raise ValueError(f"prediction has {x.shape[0]} frames of {name}, ground truth {num_frames}")

    if extrinsics is not None:
        cams = camera_metrics(extrinsics, g["extrinsics"])
        out.update(ate=cams["ate"], rpe_trans=cams["rpe_trans"], rpe_rot_deg=cams["rpe_rot_deg"])

    points = None
    if pred.get("world_points") is not None and tuple(pred["world_points"].shape[1:3]) == tuple(g["depth"].shape[1:]):
        points = as_tensor(pred["world_points"])
    if depth is not None:
        depth, intrinsics = match_resolution(depth, intrinsics, tuple(g["depth"].shape[1:]))
        d = depth_metrics(depth, g["depth"], g["valid"], depth_alignment)
        out.update(depth_abs_rel=d["abs_rel"], depth_delta_1_25=d["delta_1_25"])
        if points is None and extrinsics is not None and intrinsics is not None:
            points = unproject_depth(depth, extrinsics, intrinsics)
    if points is not None:
        pc = pointcloud_metrics(points[g["valid"]], g["world_points"][g["valid"]], max_points=max_points, seed=seed)
        out.update(pc_accuracy=pc["accuracy"], pc_completeness=pc["completeness"], pc_chamfer=pc["chamfer"])
    return out


def nanmean(values: list[float]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else NAN
