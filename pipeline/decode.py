"""CPU side of a sequence: read the frames, decode them, resize to the model's input geometry.

This runs in Ray tasks, away from the model actors, so GPUs never wait on JPEG decoding or on
the object store. Frames stream through: each is decoded, turned upright (EXIF orientation, a
video's display matrix), resized into a uint8 buffer and dropped, so a sequence's decode memory is
its resized frames plus the few source frames in the works (and a few encoded files read ahead),
whatever its length or resolution. A task of `threads` CPUs turns that many frames into model
input at once (FFmpeg decodes in order on the task's thread; the RGB conversion, JPEG decoding and
bicubic resize run without the GIL) and appends them in order: the pixels are the same as one at
a time. Frames larger than `input.max_pixels` are refused from the image header or the video
stream before any pixel is decoded.

Every problem that lies in the data itself is raised as `InputError` (failed, not retried); I/O
hiccups stay ordinary exceptions so the coordinator retries them.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from zipmap_core.images import FrameBuffer, ImageLoadError, ImageTooLargeError, PreparedFrame, open_image

from .discovery import SequenceSource
from .errors import InputError
from .sampling import ChosenFrames, FrameSelection
from .spec import FrameSampling, JobSpec
from .storage import Store

READ_AHEAD = 8  # image files fetched at once (concurrently on object stores)
_UNSET = object()
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


# a pixel's value in [0, 1], by uint8 level: x / 255 in float32, looked up (the engine process
# makes its float images with it too, on the accelerator for the offline engine)
PIXEL_VALUES = np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0

@dataclass
class DecodedSequence:
    """The model input of one sequence plus what the frames table needs to know about sources.

    `pixels` holds the preprocessed frames as uint8 (the float images are exactly `u8 / 255`:
    4x less object store traffic than float32); `images()` restores the float tensor.
    """

    sequence_id: str
    pixels: np.ndarray  # [S, 3, H, W] uint8
    frame_uris: list[str]
    source_sizes: list[tuple[int, int]]  # (width, height) of each original frame, as displayed
    decode_s: float
    threads: int = 1  # frames turned into model input at once

    @property
    def num_frames(self) -> int:
        return int(self.pixels.shape[0])

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """float32 [S, 3, H, W] in [0, 1] (frames [start, stop)), identical to what load_images returned."""
        return torch.from_numpy(PIXEL_VALUES[self.pixels[start:stop]])


def decode_sequence(
    source: SequenceSource, spec: JobSpec, *, indices: Sequence[int] | None = None, threads: int | None = None
) -> DecodedSequence:
    """Read, select and preprocess one sequence (see module docstring for the error contract).

    `indices`: decode exactly these source frames instead of sampling (a finished run's frames again).
    `threads`: frames turned into model input at once, and FFmpeg's threads (default: from
    resources.decode_cpus; 1 when the spec leaves that to the run, which passes what it chose).
    """
    start = time.perf_counter()
    sampling = source.sampling or spec.input.sampling
    chosen = None if indices is None else ChosenFrames.of(indices)
    frames = FrameBuffer(size=spec.preprocess.size, mode=spec.preprocess.mode)
    uris: list[str] = []
    read = _read_video if source.kind == "video" else _read_images
    threads = threads or decode_threads(spec.resources.decode_cpus)
    try:
        selection = read(source, spec, sampling, frames, uris, chosen, threads)
    except ImageTooLargeError as exc:
        raise InputError(f"sequence {source.sequence_id}: {exc} (input.max_pixels)") from None
    except ImageLoadError as exc:
        raise InputError(f"sequence {source.sequence_id}: {exc}") from None
    _check_count(source, len(uris), spec, selection)
    width, height = frames.source_size or (0, 0)
    return DecodedSequence(
        sequence_id=source.sequence_id,
        pixels=frames.uint8(),
        frame_uris=uris,
        source_sizes=[(int(width), int(height))] * len(uris),
        decode_s=time.perf_counter() - start,
        threads=threads,
    )


def _check_count(source: SequenceSource, count: int, spec: JobSpec, selection: FrameSelection | ChosenFrames) -> None:
    how = "" if selection.describe() == "every frame" else f" after sampling ({selection.describe()})"
    if count == 0:
        raise InputError(f"sequence {source.sequence_id}: no frames{how} in {source.uri}")
    if count < spec.input.min_frames:
        raise InputError(
            f"sequence {source.sequence_id}: {count} frame(s){how}, fewer than min_frames={spec.input.min_frames}"
        )


def decode_threads(decode_cpus: float | None) -> int:
    """Threads of a decode task of `decode_cpus` CPUs (None: 1)."""
    return max(1, int(decode_cpus or 1))


def _in_order(
    items: Iterable[_Item], work: Callable[[_Item], _Result], keep: Callable[[_Result], None], threads: int
) -> None:
    """keep(work(item)) for every item, in the items' order, `work` running on `threads` threads.

    Items are taken from `items` on this thread, and at most 2 x threads of them are taken and not
    yet kept (in the works, or done and waiting for an earlier one), so memory stays bounded
    whatever the number of items. An exception from `items`, `work` or `keep` ends it (queued work
    is dropped, running work finishes) and propagates.
    """
    if threads <= 1:
        for item in items:
            keep(work(item))
        return
    pending: deque[Future[_Result]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        try:
            for item in items:
                pending.append(pool.submit(work, item))
                if len(pending) == 2 * threads:
                    keep(pending.popleft().result())
            while pending:
                keep(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()


def _appender(frames: FrameBuffer, uris: list[str]) -> Callable[[tuple[str, PreparedFrame]], None]:
    """Appends (uri, frame) to the sequence, in the order it is called."""

    def keep(item: tuple[str, PreparedFrame]) -> None:
        frames.append(item[1], item[0])
        uris.append(item[0])

    return keep


# --- image folders ---------------------------------------------------------------------------


def _read_images(
    source: SequenceSource, spec: JobSpec, sampling: FrameSampling, frames: FrameBuffer, uris: list[str],
    explicit: ChosenFrames | None, threads: int,
) -> FrameSelection | ChosenFrames:
    selection = explicit or FrameSelection.plan(sampling, sampling.image_fps)
    chosen = [source.frames[i] for i in selection.indices(len(source.frames))]
    frames.reserve(len(chosen))
    store = Store(source.uri, spec.storage)

    def files() -> Iterator[tuple[str, bytes]]:
        for begin in range(0, len(chosen), READ_AHEAD):
            batch = chosen[begin : begin + READ_AHEAD]
            try:
                blobs = store.read_many(batch)
            except FileNotFoundError as exc:
                raise InputError(f"sequence {source.sequence_id}: frame not found: {exc}") from None
            yield from zip(batch, blobs)

    def to_input(file: tuple[str, bytes]) -> tuple[str, PreparedFrame]:  # on the decode threads
        uri, data = file
        return uri, frames.prepare(open_image(data, uri, max_pixels=spec.input.max_pixels), uri)

    _in_order(files(), to_input, _appender(frames, uris), threads)
    return selection


# --- videos ----------------------------------------------------------------------------------


def _read_video(
    source: SequenceSource, spec: JobSpec, sampling: FrameSampling, frames: FrameBuffer, uris: list[str],
    explicit: ChosenFrames | None, threads: int,
) -> FrameSelection | ChosenFrames:
    av = _import_av(source)
    store = Store(source.uri, spec.storage)
    try:
        with store.open(source.uri, "rb") as f, av.open(f) as container:
            if not container.streams.video:
                raise InputError(f"sequence {source.sequence_id}: {source.uri} has no video stream")
            stream = container.streams.video[0]
            _check_pixels(source, stream.codec_context.width, stream.codec_context.height, spec)
            rate = _frame_rate(stream)
            if explicit is None and sampling.fps is not None and rate is None:
                raise InputError(f"sequence {source.sequence_id}: {source.uri} has no frame rate to sample fps from")
            selection = explicit or FrameSelection.plan(sampling, rate)
            total = int(stream.frames or 0) or None  # from the container's index, when it has one
            if selection.needs_total and total is None:
                total = _count_frames(av, store, source.uri)
            frames.reserve(sum(1 for _ in selection.indices(total)) if total else 16)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            wanted = selection.indices(total if selection.needs_total else None)
            upright: Any = _UNSET

            def decoded() -> Iterator[tuple[str, Any]]:  # FFmpeg, in order, on this thread
                nonlocal upright
                for index, frame in _selected(container.decode(stream), wanted):
                    _check_pixels(source, frame.width, frame.height, spec)
                    if upright is _UNSET:  # the stream's display matrix, which FFmpeg copies to every frame
                        upright = _upright_transpose(frame, source)
                    yield f"{source.uri}#frame={index}", frame

            def to_input(item: tuple[str, Any]) -> tuple[str, PreparedFrame]:  # on the decode threads
                uri, frame = item
                # the pixels of frame.to_image(), without its two copies under the GIL, and on this
                # thread: swscale's default starts a thread per core for every frame (a new context
                # each), 18.8 ms of wall time a 1080p frame with 16 against 2.8 with one; same pixels
                image = Image.fromarray(frame.to_ndarray(format="rgb24", threads=1))
                return uri, frames.prepare(image if upright is None else image.transpose(upright), uri)

            _in_order(decoded(), to_input, _appender(frames, uris), threads)
    except FileNotFoundError:
        raise InputError(f"sequence {source.sequence_id}: video not found: {source.uri}") from None
    except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
        raise InputError(f"sequence {source.sequence_id}: cannot decode video {source.uri}: {exc}") from None
    return selection


def _import_av(source: SequenceSource) -> Any:
    try:
        import av  # optional: only video inputs need it
    except ImportError:
        raise InputError(
            f"sequence {source.sequence_id}: {source.uri} is a video; install av to read videos (pip install av)"
        ) from None
    return av


def _selected(decoded: Iterator[Any], wanted: Iterator[int]) -> Iterator[tuple[int, Any]]:
    """(index, frame) of the wanted indices (ascending); stops decoding after the last one."""
    target = next(wanted, None)
    for index, frame in enumerate(decoded):
        if target is None:
            return
        if index == target:
            yield index, frame
            target = next(wanted, None)


def _frame_rate(stream: Any) -> float | None:
    """The average frame rate, as OpenCV's CAP_PROP_FPS (which the released demo reads) gives it."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return None


def _count_frames(av: Any, store: Store, uri: str) -> int:
    """Frames of the first video stream, counted by demuxing (no decoding) a second reader."""
    with store.open(uri, "rb") as f, av.open(f) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size and not packet.is_discard)


def _check_pixels(source: SequenceSource, width: int, height: int, spec: JobSpec) -> None:
    if width * height > spec.input.max_pixels:
        raise InputError(
            f"sequence {source.sequence_id}: {source.uri}: video frames of {width}x{height} are "
            f"{width * height / 1e6:.1f} megapixels, more than input.max_pixels={spec.input.max_pixels}; not decoded"
        )


# The display matrix's rotation/flip part [[a, c], [b, d]] maps a decoded pixel (x, y), y down,
# to (a x + c y, b x + d y) on screen (FFmpeg's libavutil/display.h). By its signs: the PIL
# transpose that shows the frame upright.
_UPRIGHT = {
    (1, 0, 0, 1): None,
    (-1, 0, 0, 1): Image.Transpose.FLIP_LEFT_RIGHT,
    (1, 0, 0, -1): Image.Transpose.FLIP_TOP_BOTTOM,
    (-1, 0, 0, -1): Image.Transpose.ROTATE_180,
    (0, 1, -1, 0): Image.Transpose.ROTATE_270,  # 90 degrees clockwise: portrait phone videos
    (0, -1, 1, 0): Image.Transpose.ROTATE_90,
    (0, 1, 1, 0): Image.Transpose.TRANSPOSE,
    (0, -1, -1, 0): Image.Transpose.TRANSVERSE,
}


def _upright_transpose(frame: Any, source: SequenceSource) -> Image.Transpose | None:
    """The transpose that shows the video's frames as players do (None: they are upright)."""
    matrix = _display_matrix(frame)
    if matrix is None:
        return None
    a, b, c, d = (matrix[i] / 65536.0 for i in (0, 1, 3, 4))  # 16.16 fixed point
    key = tuple(round(v) for v in (a, b, c, d))
    if max(abs(v - k) for v, k in zip((a, b, c, d), key)) > 0.01 or key not in _UPRIGHT:
        raise InputError(
            f"sequence {source.sequence_id}: {source.uri}: the display matrix {list(matrix)} is not a rotation "
            "by a multiple of 90 degrees or a flip"
        )
    return _UPRIGHT[key]


def _display_matrix(frame: Any) -> tuple[int, ...] | None:
    """The frame's DISPLAYMATRIX side data. Read once per video: PyAV's side data container and
    its frame refer to each other, so every frame it is read from waits for the cycle collector."""
    for data in frame.side_data:
        kind = getattr(data, "type", None)
        if getattr(kind, "name", kind) == "DISPLAYMATRIX":
            return struct.unpack("=9i", bytes(data))
    return None
