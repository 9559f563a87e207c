"""Similarity alignment (Umeyama): predictions live in their own frame and scale, so they are
mapped onto the ground truth before any distance is measured."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Sim3:
    """x -> scale * rotation @ x + translation (float64)."""

    scale: float
    rotation: Tensor  # [3, 3]
    translation: Tensor  # [3]

    def apply(self, points: Tensor) -> Tensor:
        """Transforms points [..., 3]."""
        return self.scale * points @ self.rotation.T + self.translation

    @staticmethod
    def identity() -> Sim3:
        return Sim3(1.0, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def umeyama(source: Tensor, target: Tensor, with_scale: bool = True) -> Sim3:
    """The similarity minimising sum |target_i - (s R source_i + t)|^2 (Umeyama 1991).

    Degenerate input is handled instead of failing: when the source points do not spread (one
    point, or all identical), the best similarity collapses them onto the target mean (scale 0),
    or with `with_scale=False` simply translates them there.
    """
    source, target = source.to(torch.float64), target.to(torch.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"expected two [N, 3] point sets, got {tuple(source.shape)} and {tuple(target.shape)}")
    if source.shape[0] == 0:
        raise ValueError("cannot align empty point sets")
    mu_s, mu_t = source.mean(0), target.mean(0)
    xs, xt = source - mu_s, target - mu_t
    var_s = (xs * xs).sum(-1).mean()
    var_t = (xt * xt).sum(-1).mean()
    eye = torch.eye(3, dtype=torch.float64)
    if var_s <= 1e-24 + 1e-12 * var_t:
        scale = 0.0 if with_scale else 1.0
        return Sim3(scale, eye, mu_t - scale * mu_s)
    cov = xt.T @ xs / source.shape[0]
    u, d, vh = torch.linalg.svd(cov)
    signs = torch.ones(3, dtype=torch.float64)
    if torch.linalg.det(u) * torch.linalg.det(vh) < 0:
        signs[2] = -1.0  # a reflection is not a rotation
    rotation = u @ torch.diag(signs) @ vh
    scale = float((d * signs).sum() / var_s) if with_scale else 1.0
    return Sim3(scale, rotation, mu_t - scale * rotation @ mu_s)
