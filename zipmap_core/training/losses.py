"""Training losses (VGGT recipe): camera, confidence-weighted depth, camera-frame points.

The network sees no absolute scale or world frame, so the targets are put into the frame it can
predict: cameras re-expressed relative to the first frame (which the model treats as the
reference view), and every length (translations, depths, points) divided by the scene scale, the
mean distance of the sequence's valid ground-truth points from the first camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zipmap_core.geometry import align_to_first_view, cameras_to_pose_encoding

LossKind = Literal["l1", "huber"]
MIN_SCALE = 1e-6


@dataclass(frozen=True)
class Targets:
    """Ground truth in the model's frame and units (first camera, scene scale 1)."""

    pose_enc: Tensor  # [B, S, 9] absT_quaR_FoV of cameras relative to frame 0, T / scale
    depth: Tensor  # [B, S, H, W] z-depth / scale, 0 where invalid
    points: Tensor  # [B, S, H, W, 3] camera-frame points / scale, 0 where invalid
    valid: Tensor  # [B, S, H, W] bool
    scale: Tensor  # [B] the scene scale each sequence was divided by


@dataclass(frozen=True)
class LossWeights:
    """Relative weights of the loss terms (camera 5 : depth 1 : points 1, as in VGGT)."""

    camera: float = 5.0
    depth: float = 1.0
    points: float = 1.0
    log_depth: float = 1.0  # |log d - log d*|, unweighted by confidence (see depth_loss)
    gradient: float = 1.0  # spatial-gradient term inside the depth and point losses (0: off)
    conf_alpha: float = 0.2  # weight of -log(conf) in the depth loss
    camera_gamma: float = 0.6  # weight decay of earlier camera-head iterations
    camera_kind: LossKind = "l1"


def _to_first_camera(points: Tensor, extrinsics: Tensor) -> Tensor:
    """World points [B, ..., 3] into the frame of camera-from-world extrinsics [B, 3, 4]."""
    R, t = extrinsics[:, :3, :3], extrinsics[:, :3, 3]
    shape = points.shape
    flat = points.reshape(shape[0], -1, 3)
    return (flat @ R.transpose(-1, -2) + t[:, None]).reshape(shape)


def scene_scale(world_points: Tensor, valid: Tensor, extrinsics: Tensor) -> Tensor:
    """Mean distance of valid GT points [B, S, H, W, 3] from the first camera [B, S, 3, 4] -> [B]."""
    dist = _to_first_camera(world_points.float(), extrinsics[:, 0].float()).norm(dim=-1)
    mask = valid.float()
    mean = (dist * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
    return mean.clamp_min(MIN_SCALE)


def make_targets(
    depth: Tensor, valid: Tensor, extrinsics: Tensor, intrinsics: Tensor, world_points: Tensor
) -> Targets:
    """Normalised targets from a batch of ground truth ([B, S, ...], extrinsics camera-from-world).

    Camera-frame points come from transforming the GT world points (exact, whatever the pixel
    convention), not from re-unprojecting the depth.
    """
    valid = valid & (depth > 0)
    B, S, H, W = depth.shape
    scale = scene_scale(world_points, valid, extrinsics)
    relative = align_to_first_view(extrinsics.float())
    relative = torch.cat([relative[..., :3], relative[..., 3:] / scale[:, None, None, None]], dim=-1)
    pose_enc = cameras_to_pose_encoding(relative, intrinsics.float(), (H, W))
    R, t = extrinsics[..., :3, :3].float(), extrinsics[..., :3, 3].float()
    cam = torch.einsum("bsij,bshwj->bshwi", R, world_points.float()) + t[:, :, None, None, :]
    inv = (1.0 / scale)[:, None, None, None]
    points = torch.where(valid[..., None], cam * inv[..., None], torch.zeros_like(cam))
    depth = torch.where(valid, depth.float() * inv, torch.zeros_like(depth, dtype=torch.float32))
    return Targets(pose_enc=pose_enc, depth=depth, points=points, valid=valid, scale=scale)


def _regression(diff: Tensor, kind: LossKind) -> Tensor:
    if kind == "l1":
        return diff.abs()
    if kind == "huber":
        return F.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=0.1)
    raise ValueError(f"unknown camera loss kind {kind!r}")


def camera_loss(
    pred: Tensor | list[Tensor], target: Tensor, kind: LossKind = "l1", gamma: float = 0.6
) -> dict[str, Tensor]:
    """Translation, rotation and field-of-view losses of pose encodings [B, S, 9].

    `pred` may be every iteration of the camera head: iteration i of n is weighted gamma^(n-1-i)
    (the last counts most) and the weights are normalised, so the scale of the loss does not
    depend on the number of iterations. A quaternion and its negation are the same rotation, so
    the rotation error is the smaller of the two.
    """
    preds = pred if isinstance(pred, (list, tuple)) else [pred]
    n = len(preds)
    weights = [gamma ** (n - 1 - i) for i in range(n)]
    total = sum(weights)
    out = {"camera_T": 0.0, "camera_R": 0.0, "camera_FoV": 0.0}
    for w, p in zip(weights, preds):
        p = p.float()
        rot = torch.minimum(
            _regression(p[..., 3:7] - target[..., 3:7], kind).mean(-1),
            _regression(p[..., 3:7] + target[..., 3:7], kind).mean(-1),
        )
        out["camera_T"] = out["camera_T"] + w / total * _regression(p[..., :3] - target[..., :3], kind).mean()
        out["camera_R"] = out["camera_R"] + w / total * rot.mean()
        out["camera_FoV"] = out["camera_FoV"] + w / total * _regression(p[..., 7:] - target[..., 7:], kind).mean()
    return out


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def gradient_loss(diff: Tensor, valid: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean |spatial gradient| of an error map [B, S, H, W, C] over pixel pairs that are both valid.

    It penalises a wrong shape (edges, slopes) rather than a wrong offset, which sharpens the
    predicted maps; `weight` [B, S, H, W] (the confidence) weights each pair by its mean.
    """
    terms = []
    for dim in (2, 3):  # along H, then along W
        n = diff.shape[dim] - 1
        d = (diff.narrow(dim, 1, n) - diff.narrow(dim, 0, n)).abs().sum(-1)
        pair = valid.narrow(dim, 1, n) & valid.narrow(dim, 0, n)
        if weight is not None:
            d = d * 0.5 * (weight.narrow(dim, 1, n) + weight.narrow(dim, 0, n))
        terms.append(_masked_mean(d, pair))
    return terms[0] + terms[1]


def depth_loss(
    pred: Tensor,
    conf: Tensor,
    target: Tensor,
    valid: Tensor,
    alpha: float = 0.2,
    gradient: float = 1.0,
    log_depth: float = 1.0,
) -> dict[str, Tensor]:
    """conf * |d - d*| - alpha * log(conf) over valid pixels, a conf-weighted gradient term, and
    an unweighted |log d - log d*| term.

    pred [B, S, H, W] or [B, S, H, W, 1], conf [B, S, H, W] (>= 1 from the model's expp1). The
    confidence lets the network down-weight pixels it cannot get right (sky edges, far terrain)
    at the price of the log term.

    Why the log-depth term: depth and confidence come out of the same last layer, and wherever
    |d - d*| > alpha the confidence loss keeps pushing conf towards its floor of 1 (its raw
    output towards -inf). Adam turns that vanishing but one-signed gradient into full-size steps,
    which can drag the depth channel along until exp(x) underflows and depth stops learning (seen
    within tens of steps on the TTT demo model). log d = x for the exp activation, so this term's
    gradient never vanishes and holds depth in place; it also weighs errors relatively, as AbsRel
    does.
    """
    if pred.dim() == target.dim() + 1:
        pred = pred[..., 0]
    pred, conf = pred.float(), conf.float()
    diff = (pred - target)[..., None]
    out = {"depth": _masked_mean(conf * diff[..., 0].abs() - alpha * torch.log(conf), valid)}
    if gradient > 0:
        out["depth_grad"] = gradient * gradient_loss(diff, valid, conf)
    if log_depth > 0:
        log_err = (torch.log(pred.clamp_min(1e-30)) - torch.log(target.clamp_min(1e-30))).abs()
        out["depth_log"] = log_depth * _masked_mean(log_err, valid)
    return out


def points_loss(pred: Tensor, target: Tensor, valid: Tensor, gradient: float = 1.0) -> dict[str, Tensor]:
    """L1 (summed over x, y, z) of camera-frame points [B, S, H, W, 3] over valid pixels, plus a
    gradient term. The local-point head has no confidence output, so the terms are unweighted."""
    diff = pred.float() - target
    out = {"points": _masked_mean(diff.abs().sum(-1), valid)}
    if gradient > 0:
        out["points_grad"] = gradient * gradient_loss(diff, valid)
    return out


def total_loss(
    outputs: dict, targets: Targets, weights: LossWeights = LossWeights()
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted sum of every term the outputs allow, and each (weighted, detached) term.

    The terms stay tensors: turning them into floats every step would stall the GPU for logging.
    `outputs`: pose_enc [B, S, 9] or pose_encs (every camera-head iteration), depth + depth_conf,
    local_points; a missing head's terms are skipped.
    """
    terms: dict[str, Tensor] = {}
    pose = outputs.get("pose_encs", outputs.get("pose_enc"))
    if pose is not None:
        for name, value in camera_loss(pose, targets.pose_enc, weights.camera_kind, weights.camera_gamma).items():
            terms[name] = weights.camera * value
    if outputs.get("depth") is not None:
        parts = depth_loss(
            outputs["depth"], outputs["depth_conf"], targets.depth, targets.valid,
            weights.conf_alpha, weights.gradient, weights.log_depth,
        )
        terms.update({name: weights.depth * value for name, value in parts.items()})
    if outputs.get("local_points") is not None:
        parts = points_loss(outputs["local_points"], targets.points, targets.valid, weights.gradient)
        terms.update({name: weights.points * value for name, value in parts.items()})
    if not terms:
        raise ValueError("the outputs hold nothing to train: no pose_enc, depth or local_points")
    loss = sum(terms.values())
    return loss, {name: value.detach() for name, value in terms.items()}
