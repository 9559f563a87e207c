"""Top-down trajectory plots: matplotlib when it is installed, otherwise a hand-written SVG."""

from __future__ import annotations

import html
import os
from typing import Any

import fsspec
import torch
from torch import Tensor

from .metrics import align_cameras, as_tensor, camera_centres


def _top_down_basis(gt_extrinsics: Tensor) -> Tensor:
    """Two world axes [2, 3] spanning the plane seen from above.

    "Up" is the mean of the cameras' up directions (-y of an OpenCV camera), which holds for
    any upright capture whatever the world convention; without a clear mean it falls back to z.
    """
    up = -gt_extrinsics[:, 1, :3].mean(0)
    if up.norm() < 0.5:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    up = up / up.norm()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(up @ helper)) > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    first = torch.linalg.cross(up, helper)
    first = first / first.norm()
    return torch.stack([first, torch.linalg.cross(up, first)])


def _write(path: str, data: bytes) -> None:
    with fsspec.open(path, "wb") as f:
        f.write(data)


def _svg(tracks: dict[str, Tensor], title: str, size: int = 480, margin: int = 40) -> bytes:
    """A minimal SVG with one polyline per track, y pointing up, equal axis scales."""
    every = torch.cat(list(tracks.values()))
    lo, hi = every.min(0).values, every.max(0).values
    span = float((hi - lo).max().clamp_min(1e-9))
    scale = (size - 2 * margin) / span

    def xy(p: Tensor) -> tuple[float, float]:
        return margin + float(p[0] - lo[0]) * scale, size - margin - float(p[1] - lo[1]) * scale

    colours = {"ground truth": "#222222", "prediction": "#d62728"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">',
        f'<rect width="{size}" height="{size}" fill="white"/>',
        f'<text x="{margin}" y="{margin / 2 + 5}" font-family="sans-serif" font-size="14">{html.escape(title)}</text>',
    ]
    for row, (name, track) in enumerate(tracks.items()):
        colour = colours.get(name, "#1f77b4")
        points = " ".join(f"{x:.2f},{y:.2f}" for x, y in map(xy, track))
        dash = ' stroke-dasharray="6,4"' if name == "prediction" else ""
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        x0, y0 = xy(track[0])
        parts.append(f'<circle cx="{x0:.2f}" cy="{y0:.2f}" r="4" fill="{colour}"/>')
        parts.append(
            f'<text x="{size - margin - 120}" y="{size - margin / 2 - 14 * row}" font-family="sans-serif" '
            f'font-size="12" fill="{colour}">{name}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts).encode()


def plot_trajectories(pred_extrinsics: Any, gt_extrinsics: Any, path_png: str, title: str = "") -> str:
    """Draws GT and Sim(3)-aligned predicted camera centres seen from above; returns the path
    written: `path_png` with matplotlib, else the same path with an .svg suffix (dots mark the
    first frame)."""
    pred, gt = as_tensor(pred_extrinsics), as_tensor(gt_extrinsics)
    basis = _top_down_basis(gt)
    aligned = align_cameras(pred, gt).apply(camera_centres(pred))
    tracks = {"ground truth": camera_centres(gt) @ basis.T, "prediction": aligned @ basis.T}
    try:
        from matplotlib.figure import Figure  # a bare Figure renders without pyplot or a GUI backend
    except ImportError:
        path = os.path.splitext(path_png)[0] + ".svg"
        _write(path, _svg(tracks, title or "camera centres, top-down (aligned)"))
        return path
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    for name, track in tracks.items():
        style = "--" if name == "prediction" else "-"
        line = ax.plot(track[:, 0].numpy(), track[:, 1].numpy(), style, label=name)[0]
        ax.plot(track[:1, 0].numpy(), track[:1, 1].numpy(), "o", color=line.get_color())
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or "camera centres, top-down (aligned)")
    ax.legend()
    with fsspec.open(path_png, "wb") as f:
        fig.savefig(f, format="png")
    return path_png
