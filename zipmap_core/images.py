"""Image loading and preprocessing for ZipMap.

The geometry follows the released VGGT/ZipMap preprocessing exactly ("crop": fixed width,
height rounded to the patch size, centre-cropped; "pad": longer side fixed, padded with white
to a square), because the model was trained on images shaped that way and the patch grid
must divide the image.

Two deliberate differences from the released loader: photos are turned upright by their EXIF
orientation (the released code feeds a portrait phone photo sideways), and frames are resized
one at a time into a uint8 buffer (`FrameBuffer`), so preprocessing a long sequence holds its
resized frames and one source frame, not every source frame.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import fsspec
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

PATCH = 14

PreprocessMode = Literal["crop", "pad"]
ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray

__all__ = [
    "FrameBuffer",
    "ImageLoadError",
    "ImageSource",
    "ImageTooLargeError",
    "InputToSource",
    "PreparedFrame",
    "image_to_uint8",
    "input_to_source",
    "load_images",
    "open_image",
    "preprocess_images",
]


class ImageLoadError(ValueError):
    """An input image could not be used; the message names the offending frame/source."""


class ImageTooLargeError(ImageLoadError):
    """A frame has more pixels than allowed (or than Pillow's decompression-bomb limit)."""


def load_images(
    sources: Sequence[ImageSource] | ImageSource,
    *,
    size: int = 518,
    mode: PreprocessMode = "crop",
    storage_options: dict[str, Any] | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Decode a sequence of frames and preprocess them into a float32 [S, 3, H, W] tensor in [0, 1].

    `sources` items may be local paths or fsspec URLs (str / PathLike), encoded image bytes,
    PIL images, or HxWx3 uint8 arrays (decoded video frames); a 4-D uint8 array [S, H, W, 3]
    is taken as S frames. All frames must share one original size (after EXIF orientation).
    Frames are decoded and resized one at a time; encoded ones with more than `max_pixels`
    pixels are refused from their header, before decoding.
    """
    _check_args(size, mode)
    items = _as_list(sources)
    if not items:
        raise ImageLoadError("no images given")
    opts = storage_options or {}
    frames = FrameBuffer(size=size, mode=mode, capacity=len(items))
    for i, src in enumerate(items):
        name = _describe(src, i)
        frames.add(_decode(src, name, opts, max_pixels), name)
    return frames.tensor()


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
    frames = FrameBuffer(size=size, mode=mode, capacity=len(images))
    for image, name in zip(images, names):
        frames.add(image, name)
    return frames.tensor()


class PreparedFrame(NamedTuple):
    """A frame in the model's input geometry, made by `FrameBuffer.prepare`, waiting to be appended."""

    pixels: np.ndarray  # uint8 [3, H, W]
    source_size: tuple[int, int]  # (width, height) of the frame it was made from


class FrameBuffer:
    """Frames preprocessed one at a time into a growing uint8 [S, 3, H, W] array.

    Resizing gives 8-bit pixels and the pad colour is white, so `u8 / 255` is exactly the float
    image: the buffer holds a quarter of the float bytes, and a caller that decodes frames one by
    one never holds more than one source frame next to it. Every frame must have the first
    frame's size. `add` resizes and appends; `prepare` (thread-safe) and `append` (in frame order)
    split it for callers that resize several frames at once.
    """

    def __init__(self, *, size: int = 518, mode: PreprocessMode = "crop", capacity: int | None = None):
        _check_args(size, mode)
        self.size, self.mode = size, mode
        self._capacity = max(1, capacity or 16)
        self._data: np.ndarray | None = None
        self._count = 0
        self._first: tuple[int, int, str] | None = None  # width, height, name of frame 0

    def __len__(self) -> int:
        return self._count

    def reserve(self, capacity: int) -> None:
        """Size the buffer for `capacity` frames before the first one arrives (it grows if needed)."""
        if self._data is None:
            self._capacity = max(1, capacity)

    @property
    def source_size(self) -> tuple[int, int] | None:
        """(width, height) shared by the source frames, once one was added."""
        return None if self._first is None else self._first[:2]

    def add(self, image: Image.Image, name: str | None = None) -> None:
        """Resize one frame into the buffer (the source image can be dropped afterwards)."""
        name = name or f"<image #{self._count}>"
        self._check_size(image.size, name)  # before the resize: a wrong frame costs nothing
        self.append(self.prepare(image, f"frame {self._count} ({name})"), name)

    def prepare(self, image: Image.Image, name: str = "a frame") -> PreparedFrame:
        """One frame resized into the buffer's geometry, not yet in the buffer: `append` it, in frame
        order. Touches nothing of the buffer, so several threads may prepare frames at once (Pillow
        resizes without holding the GIL)."""
        w, h = image.size
        if w == 0 or h == 0:
            raise ImageLoadError(f"{name} has no pixels ({w}x{h})")
        return PreparedFrame(self._preprocess(image), (w, h))

    def append(self, frame: PreparedFrame, name: str | None = None) -> None:
        """Add a frame made by `prepare` as the next one of the sequence."""
        name = name or f"<image #{self._count}>"
        self._check_size(frame.source_size, name)
        pixels = frame.pixels
        if self._data is None:
            self._data = np.empty((self._capacity, *pixels.shape), np.uint8)
        elif self._count == len(self._data):
            grown = np.empty((2 * len(self._data), *pixels.shape), np.uint8)
            grown[: self._count] = self._data
            self._data = grown
        self._data[self._count] = pixels
        self._count += 1

    def _check_size(self, size: tuple[int, int], name: str) -> None:
        w, h = size
        if w == 0 or h == 0:
            raise ImageLoadError(f"frame {self._count} ({name}) has no pixels ({w}x{h})")
        if self._first is None:
            self._first = (w, h, name)
        elif (w, h) != self._first[:2]:
            w0, h0, name0 = self._first
            raise ImageLoadError(
                f"frame {self._count} ({name}) is {w}x{h} but frame 0 ({name0}) is {w0}x{h0}; "
                "a sequence must have one image size"
            )

    def uint8(self) -> np.ndarray:
        """The frames so far, uint8 [S, 3, H, W] (a view of the buffer)."""
        if self._data is None:
            raise ImageLoadError("no images given")
        return self._data[: self._count]

    def tensor(self) -> torch.Tensor:
        """The frames so far as float32 [S, 3, H, W] in [0, 1]."""
        return torch.from_numpy(self.uint8()).float().div_(255.0)

    def _preprocess(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        new_w, new_h = _target_size(w, h, self.size, self.mode)
        arr = np.asarray(_to_rgb(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
        if self.mode == "crop":
            top = max(0, (new_h - self.size) // 2)
            arr = arr[top : top + self.size]
        else:
            pad_h, pad_w = self.size - new_h, self.size - new_w
            top, left = pad_h // 2, pad_w // 2
            arr = np.pad(arr, ((top, pad_h - top), (left, pad_w - left), (0, 0)), constant_values=255)
        return arr.transpose(2, 0, 1)


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


def _decode(src: Any, name: str, storage_options: dict[str, Any], max_pixels: int | None = None) -> Image.Image:
    """Turn one source into a decoded PIL image, or raise ImageLoadError naming it."""
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return _array_to_pil(src, name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif isinstance(src, (str, os.PathLike)):
        data = _read_bytes(os.fspath(src), storage_options)
    else:
        raise ImageLoadError(
            f"{name}: unsupported image source type {type(src).__name__}; expected a path/URL, "
            "encoded bytes, a PIL image or an HxWx3 uint8 array"
        )
    return open_image(data, name, max_pixels=max_pixels)


def open_image(data: bytes, name: str, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an encoded image, turned upright by its EXIF orientation.

    The size is checked from the header before any pixel is decoded: more than `max_pixels`
    pixels (or more than Pillow's decompression-bomb limit) raises ImageTooLargeError. Any
    other failure is the data's fault (the bytes are already in memory), so it raises
    ImageLoadError naming `name`.
    """
    if not data:
        raise ImageLoadError(f"{name}: cannot decode image: the file is empty")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: cannot decode image: not an image in a format Pillow can read") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed header raises all sorts
        raise ImageLoadError(f"{name}: cannot decode image: {exc}") from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {w}x{h} is {w * h / 1e6:.1f} megapixels, more than max_pixels={max_pixels}; not decoded"
        )
    try:
        img.load()  # a full decode, so truncated files fail here, not later
        ImageOps.exif_transpose(img, in_place=True)  # (not in place, an upright image is copied)
        return img
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt data raises OSError, SyntaxError, struct.error, ...
        raise ImageLoadError(f"{name}: cannot decode image: {exc}") from None


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
    """RGB with transparency composited on white, as the released preprocessing does.

    16-bit greyscale (PNG, TIFF) is scaled to 8 bits; Pillow's own conversion (and so the released
    code) clips it, turning almost every pixel white.
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        wide = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)).convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _scaled_side(side: int, scale: float) -> int:
    """`side * scale` rounded to whole patches (Python's round, as in the released code)."""
    # Never below one patch: an extreme aspect ratio would otherwise round to zero pixels.
    return max(PATCH, round(side * scale / PATCH) * PATCH)


def _target_size(w: int, h: int, size: int, mode: str) -> tuple[int, int]:
    """Width and height after resizing, before the crop or pad."""
    if mode == "crop" or w >= h:
        return size, _scaled_side(h, size / w)
    return _scaled_side(w, size / h), size
