"""Frame files of the exports: images and 16-bit depth PNGs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

JPEG_QUALITY = 95
DEPTH_PNG_MAX = 65535


def encode_image(image: np.ndarray, extension: str) -> bytes:
    """An [H, W, 3] uint8 image as JPEG (quality 95) or lossless PNG."""
    buf = io.BytesIO()
    if extension == "jpg":
        Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def encode_depth(depth: np.ndarray, scale: float) -> bytes:
    """Depth as a 16-bit greyscale PNG of round(depth * scale); 0 where depth is invalid (not
    finite, <= 0) or beyond what 16 bits hold (65535 / scale)."""
    scaled = np.rint(np.asarray(depth, np.float64) * scale)
    valid = np.isfinite(scaled) & (scaled > 0) & (scaled <= DEPTH_PNG_MAX)
    values = np.where(valid, scaled, 0).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    return buf.getvalue()


def decode_depth(data: bytes, scale: float) -> np.ndarray:
    """What `encode_depth` wrote, back in the model's unit (0 where invalid)."""
    return np.asarray(Image.open(io.BytesIO(data)), np.float64) / scale
