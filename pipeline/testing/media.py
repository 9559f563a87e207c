"""Real media files for tests and benchmarks: videos encoded with PyAV, images too large to decode.

    encode_video("clip.mp4", frames, rate=30)                 # libx264, the codec phones use
    encode_video("portrait.mp4", frames, rotation=-90)        # display matrix as a phone writes it
    write_blank_png("bomb.png", 30000, 30000)                 # 900 MP in a 110 kB file
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Iterable
from fractions import Fraction

import numpy as np


def encode_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    *,
    rate: int | Fraction = 30,
    codec: str = "libx264",
    bit_rate: int | None = None,
    options: dict[str, str] | None = None,
    rotation: int = 0,
    hflip: bool = False,
) -> int:
    """Encode HxWx3 uint8 frames; `rotation` (degrees counter-clockwise, as PyAV reads it back)
    and `hflip` go into the container's display matrix. Returns the number of frames written."""
    import av

    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if bit_rate:
            stream.bit_rate = bit_rate
        if options:
            stream.options = options
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        for image in itertools.chain([first], frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def index_pattern(index: int, width: int, height: int, bits: int = 8) -> np.ndarray:
    """A frame whose vertical bars spell `index` in binary (bit 0 leftmost, white = 1): it
    survives lossy codecs and resizing, so a test can tell which source frame it got."""
    frame = np.zeros((height, width, 3), np.uint8)
    bar = width // bits
    for bit in range(bits):
        if index >> bit & 1:
            frame[:, bit * bar : (bit + 1) * bar] = 255
    return frame


def read_index(image: np.ndarray, bits: int = 8) -> int:
    """The index spelled by `index_pattern` in an [3, H, W] or [H, W, 3] image (any scale)."""
    gray = image.mean(axis=0) if image.shape[0] == 3 else image.mean(axis=-1)
    width = gray.shape[1]
    bar = width / bits
    columns = gray.mean(axis=0)
    scale = 1.0 if gray.max() <= 1.0 else 255.0
    return sum(1 << bit for bit in range(bits) if columns[int((bit + 0.5) * bar)] > 0.5 * scale)


def write_blank_png(path: str | os.PathLike, width: int, height: int) -> None:
    """A valid 1-bit black PNG of any size, written without holding its pixels: what a
    decompression bomb looks like (a few hundred kB that decode to gigabytes)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    chunks = []
    rows_per_block = max(1, (1 << 22) // len(row))
    for start in range(0, height, rows_per_block):
        chunks.append(compressor.compress(row * min(rows_per_block, height - start)))
    chunks.append(compressor.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(chunks)) + chunk(b"IEND", b""))
