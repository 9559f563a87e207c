"""Image loading and preprocessing for ZipMap.

The geometry follows the released VGGT/ZipMap preprocessing exactly ("crop": fixed width,
height rounded to the patch size, centre-cropped; "pad": longer side fixed, padded with white
to a square), because the model was trained on images shaped that way and the patch grid
must divide the image.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

PATCH = 14

PreprocessMode = Literal["crop", "pad"]
ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

__all__ = [
    "ImageLoadError",
    "ImageSource",
    "InputToSource",
    "image_to_uint8",
    "input_to_source",
    "load_images",
    "preprocess_images",
]


class ImageLoadError(ValueError):
    """An input image could not be used; the message names the offending frame/source."""


def load_images(
    sources: Sequence[ImageSource] | ImageSource,
    *,
    size: int = 518,
    mode: PreprocessMode = "crop",
    storage_options: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Decode a sequence of frames and preprocess them into a float32 [S, 3, H, W] tensor in [0, 1].

    `sources` items may be local paths or fsspec URLs (str / PathLike), encoded image bytes,
    PIL images, or HxWx3 uint8 arrays (decoded video frames); a 4-D uint8 array [S, H, W, 3]
    is taken as S frames. All frames must share one original size.
    """
    _check_args(size, mode)
    items = _as_list(sources)
    if not items:
        raise ImageLoadError("no images given")
    opts = storage_options or {}
    names = [_describe(src, i) for i, src in enumerate(items)]
    images = [_decode(src, name, opts) for src, name in zip(items, names)]
    return preprocess_images(images, size=size, mode=mode, names=names)


def preprocess_images(
    images: Sequence[Image.Image],
    *,
    size: int = 518,
    mode: PreprocessMode = "crop",
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Resize (bicubic) and crop or pad PIL images to the model's input geometry.

    Returns float32 [S, 3, H, W] in [0, 1]. "crop": width becomes `size`, height is the
    aspect-preserving height rounded to a multiple of 14, then centre-cropped to at most
    `size`. "pad": the longer side becomes `size`, the shorter one is rounded to a multiple
    of 14, and the image is centred on a white `size` x `size` canvas.
    """
    _check_args(size, mode)
    if not images:
        raise ImageLoadError("no images given")
    if names is None:
        names = [f"<image #{i}>" for i in range(len(images))]
    _check_same_size(images, names)
    w, h = images[0].size
    new_w, new_h = _target_size(w, h, size, mode)
    frames = [_resize_to_tensor(_to_rgb(img), new_w, new_h) for img in images]
    batch = torch.stack(frames)
    if mode == "crop":
        if new_h > size:
            top = (new_h - size) // 2
            batch = batch[:, :, top : top + size, :]
    else:
        pad_h, pad_w = size - new_h, size - new_w
        top, left = pad_h // 2, pad_w // 2
        batch = F.pad(batch, (left, pad_w - left, top, pad_h - top), value=1.0)
    return batch.clamp_(0.0, 1.0).contiguous()


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """Turn a [3, H, W] tensor in [0, 1] back into an HxWx3 uint8 array (for saving/viewing)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
    scaled = image.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0) * 255.0
    return scaled.round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


class InputToSource(NamedTuple):
    """Where a model-input pixel lies in the original image, in edge coordinates (pixel corners on
    integers): u_source = scale_x * (u_input + offset_x), v_source = scale_y * (v_input + offset_y)."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float


def input_to_source(width: int, height: int, *, size: int = 518, mode: PreprocessMode = "crop") -> InputToSource:
    """The map from model-input pixels back to a `width` x `height` original, as `preprocess_images`
    resized and cropped (or padded) it. Cameras predicted for the input are moved to the original
    resolution with it (exports that link the source frames)."""
    _check_args(size, mode)
    new_w, new_h = _target_size(width, height, size, mode)
    if mode == "crop":
        offset_x, offset_y = 0.0, float((new_h - size) // 2) if new_h > size else 0.0
    else:
        offset_x, offset_y = -float((size - new_w) // 2), -float((size - new_h) // 2)
    return InputToSource(width / new_w, height / new_h, offset_x, offset_y)


# --- helpers -------------------------------------------------------------------------------


def _check_args(size: int, mode: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % PATCH:
        raise ValueError(f"size must be a positive multiple of {PATCH}, got {size!r}")
    if mode not in ("crop", "pad"):
        raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")


def _as_list(sources: Any) -> list[Any]:
    """Accept one image as well as a sequence; a 4-D array is a stack of frames."""
    if isinstance(sources, np.ndarray):
        return list(sources) if sources.ndim == 4 else [sources]
    if isinstance(sources, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [sources]
    if torch.is_tensor(sources):
        raise ImageLoadError(
            "load_images takes encoded images, paths, PIL images or uint8 arrays, not tensors"
        )
    return list(sources)


def _describe(src: Any, index: int) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return "<PIL image>"
    if isinstance(src, np.ndarray):
        return f"<array {tuple(src.shape)} {src.dtype}>"
    return f"<{type(src).__name__}>"


def _decode(src: Any, name: str, storage_options: dict[str, Any]) -> Image.Image:
    """Turn one source into a decoded RGB PIL image, or raise ImageLoadError naming it."""
    if isinstance(src, Image.Image):
        return _to_rgb(src)
    if isinstance(src, np.ndarray):
        return _to_rgb(_array_to_pil(src, name))
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        data = _read_bytes(os.fspath(src), storage_options)
    else:
        raise ImageLoadError(
            f"{name}: unsupported image source type {type(src).__name__}; expected a path/URL, "
            "encoded bytes, a PIL image or an HxWx3 uint8 array"
        )
    if not data:
        raise ImageLoadError(f"{name}: cannot decode image: the file is empty")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # force a full decode so truncated files fail here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{name}: cannot decode image: {exc}") from exc
    return _to_rgb(img)


def _read_bytes(uri: str, storage_options: dict[str, Any]) -> bytes:
    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{uri}: file not found") from exc
    except IsADirectoryError as exc:
        raise ImageLoadError(f"{uri}: is a directory, not an image file") from exc
    except OSError as exc:
        raise ImageLoadError(f"{uri}: cannot read file: {exc}") from exc


def _array_to_pil(arr: np.ndarray, name: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise ImageLoadError(f"{name}: arrays must be uint8 (decoded frames), got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ImageLoadError(f"{name}: expected an HxWx3 (or HxW, HxWx4) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{name}: the array has no pixels")
    return Image.fromarray(np.ascontiguousarray(arr))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB with transparency composited on white, as the released preprocessing does."""
    if img.mode == "RGB":
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _check_same_size(images: Sequence[Image.Image], names: Sequence[str]) -> None:
    w0, h0 = images[0].size
    for i, img in enumerate(images):
        w, h = img.size
        if w == 0 or h == 0:
            raise ImageLoadError(f"frame {i} ({names[i]}) has no pixels ({w}x{h})")
        if (w, h) != (w0, h0):
            raise ImageLoadError(
                f"frame {i} ({names[i]}) is {w}x{h} but frame 0 ({names[0]}) is {w0}x{h0}; "
                "a sequence must have one image size"
            )


def _scaled_side(side: int, scale: float) -> int:
    """`side * scale` rounded to whole patches (Python's round, as in the released code)."""
    # Never below one patch: an extreme aspect ratio would otherwise round to zero pixels.
    return max(PATCH, round(side * scale / PATCH) * PATCH)


def _target_size(w: int, h: int, size: int, mode: str) -> tuple[int, int]:
    """Width and height after resizing, before the crop or pad."""
    if mode == "crop" or w >= h:
        return size, _scaled_side(h, size / w)
    return _scaled_side(w, size / h), size


def _resize_to_tensor(img: Image.Image, width: int, height: int) -> torch.Tensor:
    resized = img.resize((width, height), Image.Resampling.BICUBIC)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)
