"""Images and videos of rendered views: PNG files, H.264 MP4s (PyAV), depth as grey levels."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) -> PNG file contents."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def depth_range(depths: np.ndarray) -> tuple[float, float]:
    """The 2nd and 98th percentiles of the valid (finite, positive) depths: one range for every
    view of a render, so that grey levels mean the same distance in each."""
    valid = depths[np.isfinite(depths) & (depths > 0)]
    if valid.size == 0:
        return 1.0, 1.0
    lo, hi = np.percentile(valid, [2, 98])
    return float(lo), float(max(hi, lo))


def depth_to_grey(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Depth [H, W] -> uint8 grey levels of inverse depth over [lo, hi]: near is bright."""
    inv = 1.0 / np.clip(np.nan_to_num(depth, nan=hi, posinf=hi), lo, hi)
    span = 1.0 / lo - 1.0 / hi
    level = (inv - 1.0 / hi) / span if span > 0 else np.ones_like(inv)
    return (np.clip(level, 0.0, 1.0) * 255).round().astype(np.uint8)


def mp4_bytes(frames: Sequence[np.ndarray], fps: int) -> bytes:
    """uint8 frames [H, W, 3] (or [H, W] grey) -> an H.264 MP4 (yuv420p; odd sizes are padded by
    one edge row/column, which the format requires)."""
    try:
        import av
    except ImportError as exc:  # a dependency of the 'video' extra (and the container image)
        raise ImportError(f"writing MP4 needs PyAV: pip install av ({exc})") from None
    if not frames:
        raise ValueError("no frames to encode")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        H, W = frames[0].shape[:2]
        stream.height, stream.width = H + H % 2, W + W % 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            rgb = np.repeat(frame[..., None], 3, axis=-1) if frame.ndim == 2 else frame
            rgb = np.pad(rgb, ((0, H % 2), (0, W % 2), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()
