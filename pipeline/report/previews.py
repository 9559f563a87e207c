"""Per-sequence previews for the run report: a top-down trajectory plot and a rendered view of the
point cloud (PNG), the GLB scene, and the numbers the report shows (stats.json).

Drawn with numpy and Pillow only (a z-buffered point splat, ImageDraw lines), so they can be
made in the model actor while the next sequence computes, without a plotting library.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from ..exports.sequence import ExportSequence, FrameData, rgb_of, xyz_of
from .glb import rainbow, scene_glb
from .options import ReportSpec

TRAJECTORY, POINTS_VIEW, SCENE, STATS = "trajectory.png", "points.png", "scene.glb", "stats.json"
PLOT_SIZE = 320
VIEW_SIZE = (400, 300)
BACKGROUND = (246, 246, 244)


class PreviewWriter:
    """The report's per-sequence output kind ("previews"); no per-frame files."""

    def __init__(self, options: ReportSpec):
        self.options = options
        self.kind = options.kind

    def frame_files(self, frame: FrameData) -> dict[str, bytes]:
        return {}

    def write(self, sequence: ExportSequence, folder: str, *, local_sources: bool, has_depth: bool) -> None:
        os.makedirs(folder, exist_ok=True)
        files = previews(sequence, self.options.points)
        for name, data in files.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)


def previews(sequence: ExportSequence, points: int) -> dict[str, bytes]:
    """File name -> bytes of every preview of a sequence."""
    sample = sequence.sample(points)
    xyz, rgb = xyz_of(sample.vertices), rgb_of(sample.vertices)
    c2w = np.stack([c.camera_to_world() for c in sequence.cameras]) if sequence.cameras else np.empty((0, 4, 4))
    centres = c2w[:, :3, 3]
    scale = scene_scale(xyz, centres)
    fov = np.array([[math.atan(c.width / 2 / c.intrinsic[0, 0]), math.atan(c.height / 2 / c.intrinsic[1, 1])]
                    for c in sequence.cameras]).reshape(-1, 2)
    return {
        TRAJECTORY: _png(trajectory_plot(centres, c2w, xyz)),
        POINTS_VIEW: _png(point_view(xyz, rgb, c2w)),
        SCENE: scene_glb(xyz, rgb, c2w, fov, 0.05 * scale),
        STATS: json.dumps(statistics(sequence, centres, scale), indent=1).encode(),
    }


def scene_scale(xyz: np.ndarray, centres: np.ndarray) -> float:
    """Diagonal of the 5-95 percentile box of the points (of the cameras if there are none)."""
    ref = xyz if len(xyz) >= 10 else centres
    if not len(ref):
        return 1.0
    span = np.linalg.norm(np.percentile(ref, 95, axis=0) - np.percentile(ref, 5, axis=0))
    return float(span) if np.isfinite(span) and span > 0 else 1.0


def statistics(sequence: ExportSequence, centres: np.ndarray, scale: float) -> dict:
    rows = sequence.rows
    steps = np.linalg.norm(np.diff(centres, axis=0), axis=1) if len(centres) > 1 else np.zeros(0)

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return float(np.median(values)) if values else None

    return {
        "frames": len(sequence.cameras),
        "points": int(len(sequence.vertices)),
        "path_length": float(steps.sum()),
        "scene_scale": scale,
        "median_depth": median("depth_median"),
        "camera_conf": median("camera_conf"),
        "valid_depth_fraction": median("valid_depth_fraction"),
        "width": sequence.cameras[0].width if sequence.cameras else None,
        "height": sequence.cameras[0].height if sequence.cameras else None,
    }


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def up_axis(c2w: np.ndarray) -> np.ndarray:
    """The world's up: the mean of the cameras' up directions (-y of an OpenCV camera)."""
    up = -c2w[:, :3, 1].mean(0) if len(c2w) else np.zeros(3)
    norm = np.linalg.norm(up)
    return up / norm if norm > 0.5 else np.array([0.0, -1.0, 0.0])


def trajectory_plot(centres: np.ndarray, c2w: np.ndarray, xyz: np.ndarray) -> Image.Image:
    """Top-down view: points as a faint density, the camera path coloured by frame order (start
    ringed, end boxed), a tick per camera showing where it looked."""
    up = up_axis(c2w)
    first = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 0.0, 1.0])
    first /= np.linalg.norm(first)
    basis = np.stack([first, np.cross(up, first)])  # [2, 3]: the ground plane
    path = centres @ basis.T
    cloud = xyz @ basis.T
    # framed on the path and the middle of the cloud around it (10th to 90th percentile)
    extent = path if len(path) else np.zeros((1, 2))
    if len(cloud) >= 10:
        extent = np.concatenate([extent, np.percentile(cloud, [10, 90], axis=0)])
    lo, hi = extent.min(0), extent.max(0)
    span = max(1.1 * float((hi - lo).max()), 1e-9)
    margin = 16
    pixels = (PLOT_SIZE - 2 * margin) / span

    def to_px(p: np.ndarray) -> np.ndarray:
        q = (p - (lo + hi) / 2) * pixels + PLOT_SIZE / 2
        return np.stack([q[:, 0], PLOT_SIZE - q[:, 1]], axis=1)

    image = Image.new("RGB", (PLOT_SIZE, PLOT_SIZE), BACKGROUND)
    if len(cloud):
        px = np.rint(to_px(cloud)).astype(np.int64)
        inside = (px >= 0).all(1) & (px < PLOT_SIZE).all(1)
        density = np.zeros((PLOT_SIZE, PLOT_SIZE))
        np.add.at(density, (px[inside, 1], px[inside, 0]), 1.0)
        shade = np.clip(np.log1p(density) / np.log1p(max(density.max(), 1.0)), 0, 1)[..., None]
        canvas = np.asarray(image, np.float64) * (1 - 0.55 * shade) + 60 * 0.55 * shade
        image = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if len(path):
        px = to_px(path)
        colours = rainbow(len(px))
        heading = c2w[:, :3, 2] @ basis.T
        norms = np.linalg.norm(heading, axis=1, keepdims=True)
        heading = np.divide(heading, norms, out=np.zeros_like(heading), where=norms > 1e-9)
        for i, (p, h) in enumerate(zip(px, heading)):
            tip = p + np.array([h[0], -h[1]]) * 9
            draw.line([tuple(p), tuple(tip)], fill=tuple(int(c) for c in colours[i]), width=1)
        for i in range(len(px) - 1):
            draw.line([tuple(px[i]), tuple(px[i + 1])], fill=tuple(int(c) for c in colours[i]), width=2)
        x, y = px[0]
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(0, 120, 0), width=2)
        x, y = px[-1]
        draw.rectangle([x - 4, y - 4, x + 4, y + 4], outline=(170, 0, 0), width=2)
    bar = 10 ** math.floor(math.log10(span / 3)) if span > 0 else 1.0
    draw.line([(margin, PLOT_SIZE - 8), (margin + bar * pixels, PLOT_SIZE - 8)], fill=(40, 40, 40), width=2)
    draw.text((margin + bar * pixels + 4, PLOT_SIZE - 14), f"{bar:g}", fill=(40, 40, 40))
    return image


def point_view(xyz: np.ndarray, rgb: np.ndarray, c2w: np.ndarray) -> Image.Image:
    """The points seen from above and behind the first camera, looking at the cloud's median
    (z-buffered 2x2 splats)."""
    w, h = VIEW_SIZE
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    if len(xyz) == 0:
        return Image.fromarray(image)
    centre = np.median(xyz, axis=0)
    radius = scene_scale(xyz, c2w[:, :3, 3]) / 2
    up = up_axis(c2w)
    forward = c2w[0, :3, 2] if len(c2w) else np.array([0.0, 0.0, 1.0])
    forward = forward - up * (forward @ up)
    forward = forward / max(np.linalg.norm(forward), 1e-9)
    eye = centre - forward * 2.2 * radius + up * 1.2 * radius
    z_axis = centre - eye
    z_axis /= np.linalg.norm(z_axis)
    x_axis = np.cross(z_axis, up)
    x_axis /= max(np.linalg.norm(x_axis), 1e-9)
    y_axis = np.cross(z_axis, x_axis)  # down in the image
    local = (xyz - eye) @ np.stack([x_axis, y_axis, z_axis]).T
    focal = 0.5 * w / math.tan(math.radians(30))
    z = local[:, 2]
    front = z > 1e-6 * radius
    u = np.rint(focal * local[front, 0] / z[front] + w / 2).astype(np.int64)
    v = np.rint(focal * local[front, 1] / z[front] + h / 2).astype(np.int64)
    colours, depth = rgb[front], z[front]
    order = np.argsort(-depth, kind="stable")  # far first: nearer points overwrite them
    for du in (0, 1):
        for dv in (0, 1):
            uu, vv = u[order] + du, v[order] + dv
            ok = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
            image[vv[ok], uu[ok]] = colours[order][ok]
    return Image.fromarray(image)
