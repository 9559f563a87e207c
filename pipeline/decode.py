"""CPU side of a sequence: read the frames, decode them, resize to the model's input geometry.

This runs in Ray tasks, away from the model actors, so GPUs never wait on JPEG decoding or on
the object store. Every problem that lies in the data itself is raised as `InputError` (failed,
not retried); I/O hiccups stay ordinary exceptions so the coordinator retries them.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zipmap_core.images import ImageLoadError, load_images, preprocess_images

from .discovery import SequenceSource
from .errors import InputError
from .spec import InputSpec, JobSpec
from .storage import Store


@dataclass
class DecodedSequence:
    """The model input of one sequence plus what the frames table needs to know about sources.

    `pixels` is uint8 whenever that represents the preprocessed floats exactly (4x less object
    store traffic than float32), float32 otherwise; `images()` restores the float tensor.
    """

    sequence_id: str
    pixels: np.ndarray  # [S, 3, H, W]
    frame_uris: list[str]
    source_sizes: list[tuple[int, int]]  # (width, height) of each original frame
    decode_s: float

    @property
    def num_frames(self) -> int:
        return int(self.pixels.shape[0])

    def images(self) -> torch.Tensor:
        """float32 [S, 3, H, W] in [0, 1], identical to what load_images returned."""
        if self.pixels.dtype == np.uint8:
            return torch.from_numpy(self.pixels.astype(np.float32) / 255.0)
        return torch.from_numpy(np.array(self.pixels))  # a writable copy of the shared buffer


def decode_sequence(source: SequenceSource, spec: JobSpec) -> DecodedSequence:
    """Read and preprocess one sequence (see module docstring for the error contract)."""
    start = time.perf_counter()
    if source.kind == "video":
        arrays, uris = _read_video(source, spec)
        sizes = [(a.shape[1], a.shape[0]) for a in arrays]
        images = _preprocess(source, lambda: load_images(arrays, size=spec.preprocess.size, mode=spec.preprocess.mode))
    else:
        uris = _select(list(source.frames), spec.input)
        _check_count(source, len(uris), spec.input)
        pil = _read_images(source, uris, Store(source.uri, spec.storage))
        sizes = [im.size for im in pil]
        images = _preprocess(
            source, lambda: preprocess_images(pil, size=spec.preprocess.size, mode=spec.preprocess.mode, names=uris)
        )
    return DecodedSequence(
        sequence_id=source.sequence_id,
        pixels=_compact(images),
        frame_uris=uris,
        source_sizes=[(int(w), int(h)) for w, h in sizes],
        decode_s=time.perf_counter() - start,
    )


def _select(items: list, input_spec: InputSpec) -> list:
    items = items[:: input_spec.frame_stride]
    return items[: input_spec.max_frames] if input_spec.max_frames else items


def _check_count(source: SequenceSource, count: int, input_spec: InputSpec) -> None:
    if count == 0:
        raise InputError(f"sequence {source.sequence_id}: no frames found in {source.uri}")
    if count < input_spec.min_frames:
        raise InputError(
            f"sequence {source.sequence_id}: {count} frame(s), fewer than min_frames={input_spec.min_frames}"
        )


def _read_images(source: SequenceSource, uris: list[str], store: Store) -> list[Image.Image]:
    try:
        blobs = store.read_many(uris)
    except FileNotFoundError as exc:
        raise InputError(f"sequence {source.sequence_id}: frame not found: {exc}") from None
    images = []
    for uri, data in zip(uris, blobs):
        if not data:
            raise InputError(f"sequence {source.sequence_id}: {uri}: the file is empty")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()  # a full decode, so truncated files fail here
        except UnidentifiedImageError:
            raise InputError(
                f"sequence {source.sequence_id}: {uri}: not an image in a format Pillow can read"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(f"sequence {source.sequence_id}: {uri}: cannot decode image: {exc}") from None
        images.append(img)
    return images


def _read_video(source: SequenceSource, spec: JobSpec) -> tuple[list[np.ndarray], list[str]]:
    try:
        import av  # optional: only video inputs need it
    except ImportError:
        raise InputError(
            f"sequence {source.sequence_id}: {source.uri} is a video; install av to read videos (pip install av)"
        ) from None
    stride, limit = spec.input.frame_stride, spec.input.max_frames
    frames: list[np.ndarray] = []
    uris: list[str] = []
    store = Store(source.uri, spec.storage)
    try:
        with store.open(source.uri, "rb") as f, av.open(f) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index % stride:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                uris.append(f"{source.uri}#frame={index}")
                if limit and len(frames) >= limit:
                    break
    except FileNotFoundError:
        raise InputError(f"sequence {source.sequence_id}: video not found: {source.uri}") from None
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise InputError(f"sequence {source.sequence_id}: cannot decode video {source.uri}: {exc}") from None
    _check_count(source, len(frames), spec.input)
    return frames, uris


def _preprocess(source: SequenceSource, run) -> torch.Tensor:
    try:
        return run()
    except ImageLoadError as exc:
        raise InputError(f"sequence {source.sequence_id}: {exc}") from None


def _compact(images: torch.Tensor) -> np.ndarray:
    """uint8 when `u8 / 255` reproduces the floats bit for bit (the usual case), else float32."""
    floats = images.numpy()
    as_u8 = np.rint(floats * 255.0).astype(np.uint8)
    if np.array_equal(as_u8.astype(np.float32) / 255.0, floats):
        return as_u8
    return np.ascontiguousarray(floats, dtype=np.float32)
