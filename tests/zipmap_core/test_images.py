"""Tests for zipmap_core.images: geometry of crop/pad, input kinds, and every error path."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from zipmap_core.images import ImageLoadError, image_to_uint8, input_to_source, load_images, preprocess_images


def _rgb_array(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def frame_paths(tmp_path: Path) -> list[Path]:
    paths = []
    for i in range(3):
        p = tmp_path / f"frame_{i}.png"
        Image.fromarray(_rgb_array(200, 150, seed=i)).save(p)
        paths.append(p)
    return paths


# --- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("w", "h", "expected_hw"),
    [
        (1280, 720, (294, 518)),  # landscape: 720 * 518/1280 = 291.4 -> 294
        (640, 480, (392, 518)),  # 4:3 -> 388.5 -> 392
        (480, 640, (518, 518)),  # portrait: 690.7 -> 686, centre-cropped to 518
        (300, 300, (518, 518)),  # square
        (1000, 100, (56, 518)),  # very wide: 51.8 -> 56
    ],
)
def test_crop_sizes(w: int, h: int, expected_hw: tuple[int, int]) -> None:
    out = preprocess_images([Image.fromarray(_rgb_array(w, h))], size=518, mode="crop")
    assert out.shape == (1, 3, *expected_hw)
    assert out.dtype == torch.float32
    assert out.shape[2] % 14 == 0 and out.shape[3] % 14 == 0


@pytest.mark.parametrize(
    ("w", "h", "content_hw"),
    [
        (1280, 720, (294, 518)),
        (480, 640, (518, 392)),  # portrait: the height becomes size, the width is rounded
        (300, 300, (518, 518)),
    ],
)
def test_pad_sizes_and_white_border(w: int, h: int, content_hw: tuple[int, int]) -> None:
    black = np.zeros((h, w, 3), dtype=np.uint8)
    out = preprocess_images([Image.fromarray(black)], size=518, mode="pad")
    assert out.shape == (1, 3, 518, 518)
    # The black content occupies a centred content_hw box; everything else is white padding.
    dark = out[0].amax(dim=0) < 0.5
    rows = torch.nonzero(dark.any(dim=1)).flatten()
    cols = torch.nonzero(dark.any(dim=0)).flatten()
    ch, cw = content_hw
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (ch, cw)
    assert rows.min().item() == (518 - ch) // 2
    assert cols.min().item() == (518 - cw) // 2
    if ch < 518:
        assert torch.all(out[0, :, 0, :] == 1.0)
        assert torch.all(out[0, :, -1, :] == 1.0)
    if cw < 518:
        assert torch.all(out[0, :, :, 0] == 1.0)


def test_portrait_crop_is_centred() -> None:
    # 300x900 -> 154x462 (resize), then rows 154..307 are kept.
    arr = np.repeat(np.linspace(0, 255, 900, dtype=np.uint8)[:, None], 300, axis=1)
    arr = np.stack([arr, 255 - arr, arr], axis=-1)
    out = preprocess_images([Image.fromarray(arr)], size=154, mode="crop")
    assert out.shape == (1, 3, 154, 154)
    resized = np.asarray(
        Image.fromarray(arr).resize((154, 462), Image.Resampling.BICUBIC), dtype=np.float32
    ) / 255.0
    expected = torch.from_numpy(resized[154:308]).permute(2, 0, 1)
    torch.testing.assert_close(out[0], expected)


def test_values_in_unit_range_and_match_plain_resize() -> None:
    arr = _rgb_array(280, 140)
    out = preprocess_images([Image.fromarray(arr)], size=140, mode="crop")
    assert out.shape == (1, 3, 70, 140)
    assert out.min() >= 0.0 and out.max() <= 1.0
    expected = np.asarray(
        Image.fromarray(arr).resize((140, 70), Image.Resampling.BICUBIC), dtype=np.float32
    ) / 255.0
    torch.testing.assert_close(out[0].permute(1, 2, 0), torch.from_numpy(expected))


def test_other_sizes() -> None:
    out = load_images([_rgb_array(64, 48)], size=112)
    assert out.shape == (1, 3, 84, 112)
    out = load_images([_rgb_array(64, 48)], size=112, mode="pad")
    assert out.shape == (1, 3, 112, 112)


@pytest.mark.parametrize("size", [0, -14, 100, 517, 14.0, True])
def test_bad_size(size: object) -> None:
    with pytest.raises(ValueError, match="multiple of 14"):
        load_images([_rgb_array(20, 20)], size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of 14"):
        preprocess_images([Image.fromarray(_rgb_array(20, 20))], size=size)  # type: ignore[arg-type]


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        load_images([_rgb_array(20, 20)], mode="stretch")  # type: ignore[arg-type]


# --- input kinds -----------------------------------------------------------------------------


def test_paths_bytes_arrays_pil_agree(frame_paths: list[Path]) -> None:
    from_paths = load_images(frame_paths)
    from_str = load_images([str(p) for p in frame_paths])
    from_bytes = load_images([p.read_bytes() for p in frame_paths])
    from_arrays = load_images([np.asarray(Image.open(p)) for p in frame_paths])
    from_stack = load_images(np.stack([np.asarray(Image.open(p)) for p in frame_paths]))
    from_pil = load_images([Image.open(p) for p in frame_paths])
    assert from_paths.shape == (3, 3, 392, 518)
    for other in (from_str, from_bytes, from_arrays, from_stack, from_pil):
        torch.testing.assert_close(other, from_paths, rtol=0, atol=0)


def test_single_source_is_accepted(frame_paths: list[Path]) -> None:
    assert load_images(frame_paths[0]).shape == (1, 3, 392, 518)
    assert load_images(_rgb_array(200, 150)).shape == (1, 3, 392, 518)


def test_fsspec_memory_url(frame_paths: list[Path]) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/zipmap-test-{uuid.uuid4().hex}"
    urls = []
    for i, p in enumerate(frame_paths):
        fs.pipe(f"{root}/f{i}.png", p.read_bytes())
        urls.append(f"memory://{root}/f{i}.png")
    try:
        torch.testing.assert_close(load_images(urls), load_images(frame_paths), rtol=0, atol=0)
        with pytest.raises(ImageLoadError, match="not found") as info:
            load_images([urls[0], f"memory://{root}/missing.png"])
        assert "missing.png" in str(info.value)
    finally:
        fs.rm(root, recursive=True)


def test_storage_options_are_forwarded(
    frame_paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict] = []
    real_open = fsspec.open

    def spy_open(uri: str, mode: str = "rb", **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return real_open(uri, mode)

    monkeypatch.setattr("zipmap_core.images.fsspec.open", spy_open)
    load_images(frame_paths, storage_options={"anon": True})
    assert seen == [{"anon": True}] * len(frame_paths)


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red...
    rgba[:14, :, 3] = 0  # ...transparent in the top half
    rgba[14:, :, 3] = 255  # ...opaque in the bottom half
    img = Image.fromarray(rgba, mode="RGBA")
    for src in (img, _png_bytes(img), rgba):
        out = load_images([src], size=28)
        assert out.shape == (1, 3, 28, 28)
        torch.testing.assert_close(out[0, :, 2, 5], torch.ones(3))  # white
        torch.testing.assert_close(out[0, :, 25, 5], torch.tensor([1.0, 0.0, 0.0]))  # red


def test_grayscale_and_palette() -> None:
    gray = np.full((28, 42), 128, dtype=np.uint8)
    for src in (Image.fromarray(gray, mode="L"), _png_bytes(Image.fromarray(gray, mode="L")), gray):
        out = load_images([src], size=42)
        assert out.shape == (1, 3, 28, 42)
        torch.testing.assert_close(out, torch.full_like(out, 128 / 255))
    pal = Image.fromarray(_rgb_array(42, 28)).convert("P")
    out = load_images([pal, _png_bytes(pal)], size=42)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(out[0], load_images([pal.convert("RGB")], size=42)[0])


def test_image_to_uint8_round_trip() -> None:
    arr = _rgb_array(42, 28)
    out = load_images([arr], size=42)  # no resize: 28 * 42/42 = 28
    back = image_to_uint8(out[0])
    assert back.dtype == np.uint8 and back.shape == (28, 42, 3)
    np.testing.assert_array_equal(back, arr)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        image_to_uint8(out)


# --- errors ----------------------------------------------------------------------------------


def test_empty_input() -> None:
    with pytest.raises(ImageLoadError, match="no images given"):
        load_images([])
    with pytest.raises(ImageLoadError, match="no images given"):
        preprocess_images([], size=518)


def test_missing_file(tmp_path: Path, frame_paths: list[Path]) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="not found") as info:
        load_images([frame_paths[0], missing])
    assert str(missing) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_corrupt_file_and_bytes(tmp_path: Path, frame_paths: list[Path]) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ImageLoadError, match="cannot decode") as info:
        load_images([frame_paths[0], bad])
    assert str(bad) in str(info.value)

    with pytest.raises(ImageLoadError, match="cannot decode"):
        load_images([b"\x89PNG garbage"])

    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(frame_paths[0].read_bytes()[:200])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        load_images([truncated])

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_images([empty])


def test_mixed_sizes(tmp_path: Path, frame_paths: list[Path]) -> None:
    other = tmp_path / "small.png"
    Image.fromarray(_rgb_array(64, 48)).save(other)
    sources = [frame_paths[0], frame_paths[1], frame_paths[2], other]
    with pytest.raises(ImageLoadError) as info:
        load_images(sources)
    msg = str(info.value)
    assert f"frame 3 ({other}) is 64x48" in msg
    assert "frame 0" in msg and "200x150" in msg
    assert "a sequence must have one image size" in msg
    with pytest.raises(ImageLoadError, match="one image size"):
        load_images(sources, mode="pad")


def test_bad_arrays_and_types() -> None:
    with pytest.raises(ImageLoadError, match="uint8"):
        load_images([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ImageLoadError, match="HxWx3"):
        load_images([np.zeros((10, 10, 5), dtype=np.uint8)])
    with pytest.raises(ImageLoadError, match="unsupported image source"):
        load_images([12345])  # type: ignore[list-item]
    with pytest.raises(ImageLoadError, match="not tensors"):
        load_images(torch.zeros(1, 3, 14, 14))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "size, mode, source",
    [
        ((640, 360), "crop", (201.3, 150.8)),  # wider than tall: resized, no crop
        ((360, 900), "crop", (170.6, 440.2)),  # taller than the input: resized, then cropped
        ((360, 900), "pad", (170.6, 440.2)),  # padded left and right
        ((900, 360), "pad", (433.0, 170.4)),  # padded top and bottom
    ],
)
def test_input_to_source_maps_model_pixels_back_onto_the_original(size, mode, source):
    """A blob drawn at a known place of the original lands, after preprocessing, where
    `input_to_source` says (its intensity centroid, pixel corners on integers)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] + 0.5  # pixel centres, corners on integers
    blob = np.exp(-((xx - source[0]) ** 2 + (yy - source[1]) ** 2) / (2 * 12.0**2))
    image = Image.fromarray(np.repeat((blob * 200).round().astype(np.uint8)[..., None], 3, axis=2))
    model_input = preprocess_images([image], size=112, mode=mode)[0, 0].numpy()
    model_input = np.where(model_input == 1.0, 0.0, model_input)  # white padding: no signal
    weight = np.clip(model_input - 0.02, 0, None)
    v, u = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]] + 0.5
    centroid = np.array([(u * weight).sum(), (v * weight).sum()]) / weight.sum()
    m = input_to_source(w, h, size=112, mode=mode)
    mapped = ((centroid[0] + m.offset_x) * m.scale_x, (centroid[1] + m.offset_y) * m.scale_y)
    np.testing.assert_allclose(mapped, source, atol=0.3 * max(m.scale_x, m.scale_y))  # 0.3 input pixels


# --- orientation, bit depth, size limits, streaming ------------------------------------------


@pytest.mark.parametrize(("orientation", "upright"), [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(orientation: int, upright: int) -> None:
    """A phone photo stored sideways with an EXIF orientation comes out upright (the released
    loader ignores the tag)."""
    arr = _rgb_array(56, 28)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", exif=exif)
    out = load_images([buf.getvalue()], size=28, mode="pad")
    expected = load_images([np.ascontiguousarray(np.rot90(arr, upright))], size=28, mode="pad")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 56).astype(np.uint16), (28, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="TIFF")
    out = load_images([buf.getvalue()], size=56)
    np.testing.assert_array_equal(image_to_uint8(out[0])[0, :, 0], np.rint(ramp[0] / 257).astype(np.uint8))


def test_max_pixels_and_decompression_bombs_are_refused_from_the_header(tmp_path: Path) -> None:
    from pipeline.testing.media import write_blank_png
    from zipmap_core.images import ImageTooLargeError

    write_blank_png(tmp_path / "bomb.png", 30000, 30000)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_images([tmp_path / "bomb.png"])
    with pytest.raises(ImageTooLargeError, match=r"64x48 is 0.0 megapixels, more than max_pixels=3000; not decoded"):
        load_images([_png_bytes(Image.fromarray(_rgb_array(64, 48)))], max_pixels=3000)
    assert load_images([_png_bytes(Image.fromarray(_rgb_array(64, 48)))], max_pixels=3072).shape == (1, 3, 392, 518)


def test_frame_buffer_streams_into_uint8() -> None:
    from zipmap_core.images import FrameBuffer

    images = [Image.fromarray(_rgb_array(200, 150, seed=i)) for i in range(5)]
    frames = FrameBuffer(size=112, mode="pad", capacity=2)  # grows past its first guess
    for image in images:
        frames.add(image)
    assert frames.uint8().dtype == np.uint8 and frames.uint8().shape == (5, 3, 112, 112)
    assert frames.source_size == (200, 150) and len(frames) == 5
    torch.testing.assert_close(frames.tensor(), preprocess_images(images, size=112, mode="pad"), rtol=0, atol=0)
    as_floats = torch.from_numpy(frames.uint8().astype(np.float32) / 255)
    torch.testing.assert_close(frames.tensor(), as_floats, rtol=0, atol=0)
    with pytest.raises(ImageLoadError, match="one image size"):
        frames.add(Image.fromarray(_rgb_array(100, 150)), "odd.png")


def test_frames_prepared_on_threads_and_appended_in_order_equal_frames_added() -> None:
    """`prepare` touches nothing of the buffer: frames resized on several threads at once and
    appended in order are the frames `add` gives one at a time, and `append` checks sizes as `add` does."""
    from concurrent.futures import ThreadPoolExecutor

    from zipmap_core.images import FrameBuffer

    images = [Image.fromarray(_rgb_array(301, 170, seed=i)) for i in range(12)]
    added = FrameBuffer(size=112, capacity=3)
    for image in images:
        added.add(image)
    appended = FrameBuffer(size=112, capacity=3)
    with ThreadPoolExecutor(4) as pool:
        for i, frame in enumerate(pool.map(appended.prepare, images)):
            assert frame.source_size == (301, 170)
            appended.append(frame, f"frame{i}.png")
    np.testing.assert_array_equal(appended.uint8(), added.uint8())
    with pytest.raises(ImageLoadError, match=r"frame 12 \(odd.png\) is 300x170 but frame 0 \(frame0.png\) is 301x170"):
        appended.append(appended.prepare(Image.fromarray(_rgb_array(300, 170))), "odd.png")
    with pytest.raises(ImageLoadError, match=r"empty.png has no pixels \(0x5\)"):
        appended.prepare(Image.new("RGB", (0, 5)), "empty.png")
    assert len(appended) == 12
