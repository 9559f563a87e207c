"""Decoding: frame sampling on real-codec videos, per-sequence overrides, display rotation,
bounded memory, and bad input refused before decoding."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.decode import decode_sequence
from pipeline.discovery import discover
from pipeline.errors import InputError, SpecError
from pipeline.testing.media import encode_video, index_pattern, read_index, write_blank_png
from zipmap_core.images import load_images

from .conftest import IMAGE_H, IMAGE_W, input_errors, make_spec, write_sequence

av = pytest.importorskip("av")


def _spec(prefix, **fields):
    return make_spec(prefix, "/unused/out", "/unused/ckpt.pt", **fields)


def _indexed_video(path: Path, count: int, rate=30, codec="libx264") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(path, (index_pattern(i, IMAGE_W, IMAGE_H) for i in range(count)), rate=rate, codec=codec)
    return path


def _decode_one(spec):
    (source,) = discover(spec)
    return decode_sequence(source, spec)


def _indices(decoded) -> list[int]:
    """Source indices as the URIs name them, checked against what the pixels spell."""
    named = [int(uri.rsplit("#frame=", 1)[1]) for uri in decoded.frame_uris]
    assert [read_index(image.numpy()) for image in decoded.images()] == named
    return named


@pytest.mark.parametrize(
    "rate, fps, expected",
    [
        (30, 1.0, [29, 59, 89]),
        (Fraction(24000, 1001), 1.0, [23, 47, 71]),  # 23.976 fps: interval round(23.976) = 24
        (30, 2.0, [14, 29, 44, 59, 74, 89]),
    ],
)
def test_video_sampled_by_fps_as_released(tmp_path, rate, fps, expected):
    _indexed_video(tmp_path / "walk.mp4", 95, rate=rate)
    decoded = _decode_one(_spec(tmp_path, input__fps=fps))
    assert _indices(decoded) == expected
    assert decoded.source_sizes == [(IMAGE_W, IMAGE_H)] * len(expected)


def test_video_uniform_max_frames_counts_frames_without_an_index(tmp_path):
    """WebM keeps no frame count in its header: the decoder counts packets first."""
    path = _indexed_video(tmp_path / "clip.webm", 30, codec="libvpx")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    decoded = _decode_one(_spec(tmp_path, input__max_frames=4, input__spread="uniform"))
    assert _indices(decoded) == [0, 10, 19, 29]
    decoded = _decode_one(_spec(tmp_path, input__max_frames=4))
    assert _indices(decoded) == [0, 1, 2, 3]


def test_manifest_rows_override_sampling(tmp_path, caplog):
    _indexed_video(tmp_path / "a.mp4", 95)
    _indexed_video(tmp_path / "b.m4v", 40)
    _indexed_video(tmp_path / "c.mp4", 12)
    write_sequence(tmp_path / "frames", 9, seed=0)
    pq.write_table(
        pa.table(
            {
                "uri": ["a.mp4", "b.m4v", "c.mp4", "frames"],
                "fps": [1.0, None, None, 5.0],
                "image_fps": [None, None, None, 10.0],
                "max_frames": [None, 3, None, None],
                "spread": [None, "uniform", None, None],
                "notes": ["x", "y", "z", "w"],
            }
        ),
        tmp_path / "list.parquet",
    )
    spec = make_spec(
        tmp_path, "/o", "/c.pt", input__prefix="null", input__manifest=str(tmp_path / "list.parquet"),
        input__frame_stride=2,
    )
    with caplog.at_level("WARNING", logger="pipeline.discovery"):
        sources = {s.sequence_id: s for s in discover(spec)}
    assert "columns notes are ignored" in caplog.text
    decoded = {sid: decode_sequence(source, spec) for sid, source in sources.items()}
    assert _indices(decoded["a"]) == [29, 89]  # its own fps, the spec's stride 2
    assert _indices(decoded["b"]) == [0, 20, 38]  # 0, 2, ..., 38 spread to 3
    assert _indices(decoded["c"]) == [0, 2, 4, 6, 8, 10]  # the spec's sampling
    # 10 fps captures sampled at 5 fps: every 2nd frame (1, 3, ...), then the stride: 1, 5
    assert [u.rsplit("/", 1)[1] for u in decoded["frames"].frame_uris] == ["frame2.png", "frame6.png"]

    (tmp_path / "bad.csv").write_text("uri,max_frames\na.mp4,0\n")
    bad = make_spec(tmp_path, "/o", "/c.pt", input__prefix="null", input__manifest=str(tmp_path / "bad.csv"))
    with pytest.raises(SpecError, match=r"bad.csv, row 1 \(a.mp4\): max_frames: Input should be greater than"):
        discover(bad)


def _quadrants(width: int = 96, height: int = 64) -> np.ndarray:
    """Four flat colours, so every rotation and flip gives a different picture."""
    image = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w], image[:h, w:] = (230, 30, 30), (30, 230, 30)
    image[h:, :w], image[h:, w:] = (30, 30, 230), (230, 230, 30)
    return image


@pytest.mark.parametrize(
    "rotation, hflip, upright",
    [
        (-90, False, lambda a: np.rot90(a, -1)),  # a portrait phone video: turned 90 degrees clockwise
        (90, False, lambda a: np.rot90(a, 1)),
        (180, False, lambda a: np.rot90(a, 2)),
        (0, True, lambda a: a[:, ::-1]),
        (0, False, lambda a: a),
    ],
)
def test_video_display_matrix_is_applied(tmp_path, rotation, hflip, upright):
    source = _quadrants()
    encode_video(tmp_path / "phone.mp4", [source] * 3, rotation=rotation, hflip=hflip, options={"crf": "10"})
    with av.open(str(tmp_path / "phone.mp4")) as container:
        # PyAV reads back the rotation it wrote; a mirror reads as 180 degrees, so the decoder
        # uses the whole display matrix, not `frame.rotation`
        assert (next(container.decode(video=0)).rotation - (180 if hflip else rotation)) % 360 == 0
    decoded = _decode_one(_spec(tmp_path))
    shown = np.ascontiguousarray(upright(source))
    assert decoded.source_sizes == [(shown.shape[1], shown.shape[0])] * 3
    expected = load_images([shown], size=IMAGE_W)[0]
    error = (decoded.images()[0] - expected).abs().mean().item()
    assert error < 0.03, error  # codec noise only; a wrong orientation is off by about 0.4
    wrong = load_images([np.ascontiguousarray(np.rot90(shown, 2))], size=IMAGE_W)[0]
    assert (decoded.images()[0] - wrong).abs().mean().item() > 0.2


def test_image_folders_stream_exif_and_16_bit(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held upright: turn 90 degrees clockwise to show
    for i in range(2):
        Image.fromarray(_quadrants()).save(folder / f"{i}.png", exif=exif)
    decoded = _decode_one(_spec(tmp_path))
    assert decoded.source_sizes == [(64, 96)] * 2
    expected = load_images([np.ascontiguousarray(np.rot90(_quadrants(), -1))] * 2, size=IMAGE_W)
    assert torch.equal(decoded.images(), expected)  # lossless PNG: exactly the upright frames


MEMORY_PROBE = textwrap.dedent(
    """
    import json, re, sys
    import av  # imported before the baseline, as in a decode worker that has decoded before
    from pipeline.decode import decode_sequence
    from pipeline.discovery import discover
    from pipeline.spec import load_spec

    def peak_mib():
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

    spec = load_spec({"input": {"prefix": sys.argv[1]}, "output": "/unused", "preprocess": {"size": 224},
                      "model": {"preset": "tiny", "allow_random_weights": True}})
    (source,) = discover(spec)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size to what is resident now
    base = peak_mib()
    decoded = decode_sequence(source, spec, threads=int(sys.argv[2]))
    print(json.dumps({"frames": decoded.num_frames, "resized_mib": decoded.pixels.nbytes / 2**20,
                      "peak_growth_mib": peak_mib() - base}))
    """
)
DECODE_GROWTH_BOUND_MIB = 160
# Each thread of a decode task beyond the first holds one more source frame in the works: a 1080p
# video frame as FFmpeg, its RGB array and PIL's 4-byte pixels hold it (measured 32 MiB a thread),
# a 12 MP photo as PIL holds it (48 MiB).
THREAD_GROWTH_BOUND_MIB = {"video": 40, "photos": 60}


def _peak_growth(prefix: Path, threads: int = 1) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(prefix), str(threads)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak RSS reset")
def test_decode_memory_is_bounded_by_resized_frames(tmp_path):
    """A 1080p clip of 150 frames: the old decoder kept every frame as a 6.2 MB array and peaked
    2.2 GiB above its baseline; streaming holds the resized frames (13 MB) and one source frame,
    and a source frame more for each further thread."""
    yy, xx = np.mgrid[0:1080, 0:1920]
    base = ((xx + yy) // 8 % 256).astype(np.uint8)

    def frames():
        for i in range(150):
            yield np.stack([base + np.uint8(i), base[::-1], np.full_like(base, 2 * i % 256)], axis=-1)

    (tmp_path / "video").mkdir()
    encode_video(tmp_path / "video" / "long.mp4", frames(), bit_rate=500_000, options={"preset": "ultrafast"})
    video = _peak_growth(tmp_path / "video")
    assert video["frames"] == 150 and video["resized_mib"] < 15
    assert video["peak_growth_mib"] < DECODE_GROWTH_BOUND_MIB, video
    threaded = _peak_growth(tmp_path / "video", threads=4)  # the pipeline's default decode task on a GPU
    assert threaded["frames"] == 150
    assert threaded["peak_growth_mib"] - video["peak_growth_mib"] < 3 * THREAD_GROWTH_BOUND_MIB["video"], threaded

    from PIL import Image

    photos = tmp_path / "photos" / "seq"
    photos.mkdir(parents=True)
    Image.fromarray(np.stack([base] * 3, -1)).resize((4000, 3000)).save(photos / "0.jpg", quality=50)
    for i in range(1, 12):  # 12 MP photos: 36 MB each once decoded, 430 MB for the folder
        (photos / f"{i}.jpg").write_bytes((photos / "0.jpg").read_bytes())
    images = _peak_growth(tmp_path / "photos")
    assert images["frames"] == 12 and images["peak_growth_mib"] < DECODE_GROWTH_BOUND_MIB, images
    threaded_images = _peak_growth(tmp_path / "photos", threads=4)
    assert threaded_images["frames"] == 12
    assert threaded_images["peak_growth_mib"] - images["peak_growth_mib"] < 3 * THREAD_GROWTH_BOUND_MIB["photos"]
    print(f"peak decode memory above baseline: video {video}, photos {images}; "
          f"4 threads: video {threaded}, photos {threaded_images}")


def test_oversized_frames_are_refused_before_decoding(tmp_path):
    for name, side in (("bomb", 30000), ("huge", 13000)):
        (tmp_path / name).mkdir()
        for i in range(2):
            write_blank_png(tmp_path / name / f"{i}.png", side, side)
    encode_video(tmp_path / "wide.mp4", [np.zeros((64, 640, 3), np.uint8)] * 2)
    errors = input_errors(_spec(tmp_path, input__max_pixels=40000))
    assert "decompression bomb" in errors["bomb"]
    assert "13000x13000 is 169.0 megapixels, more than max_pixels=40000; not decoded" in errors["huge"]
    assert "640x64 are 0.0 megapixels, more than input.max_pixels=40000" in errors["wide"]
    default = _spec(tmp_path)  # 2**27: 13000 x 13000 is above it too
    (huge,) = [s for s in discover(default) if s.sequence_id == "huge"]
    with pytest.raises(InputError, match="more than max_pixels=134217728"):
        decode_sequence(huge, default)


def _texture(i: int, width: int = 150, height: int = 90) -> np.ndarray:
    """Fine detail that moves (every resize tap matters); 150 wide: RGB rows that FFmpeg pads."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([(xx * 3 + i * 7) % 256, (yy * 5) % 256, (xx + yy + 40 * i) % 256], axis=-1)
    return np.clip(smooth + rng.integers(-30, 31, smooth.shape), 0, 255).astype(np.uint8)


def test_threaded_decoding_gives_the_sequential_pixels(tmp_path):
    """Frames turned into model input on several threads, appended in order: the same uint8 pixels
    as the sequential path (PyAV's to_image, the upright transpose, FrameBuffer.add one at a time)."""
    from PIL import Image

    from zipmap_core.images import FrameBuffer

    video = tmp_path / "videos" / "phone.mp4"
    video.parent.mkdir()
    encode_video(video, (_texture(i) for i in range(23)), rotation=-90, options={"crf": "18"})
    sequential = FrameBuffer(size=IMAGE_W)
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            sequential.add(frame.to_image().transpose(Image.Transpose.ROTATE_270), f"{video}#frame={index}")
    spec = _spec(tmp_path / "videos", input__frame_stride=2)
    (source,) = discover(spec)
    for threads in (1, 3):
        decoded = decode_sequence(source, spec, threads=threads)
        assert decoded.threads == threads and decoded.source_sizes[0] == (90, 150)
        assert decoded.frame_uris == [f"{video}#frame={i}" for i in range(0, 23, 2)]
        np.testing.assert_array_equal(decoded.pixels, sequential.uint8()[::2])

    photos = tmp_path / "photos" / "seq"
    photos.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    for i in range(11):
        Image.fromarray(_texture(i, 120, 80)).save(photos / f"{i:02d}.jpg", quality=90, exif=exif)
    paths = sorted(photos.glob("*.jpg"))
    spec = _spec(tmp_path / "photos")
    (source,) = discover(spec)
    decoded = decode_sequence(source, spec, threads=4)
    assert decoded.frame_uris == [str(p) for p in paths] and decoded.source_sizes[0] == (80, 120)
    assert torch.equal(decoded.images(), load_images(paths, size=IMAGE_W))  # open_image and add, one at a time


def test_threaded_decoding_fails_as_the_sequential_one(tmp_path):
    from PIL import Image

    write_sequence(tmp_path / "corrupt", 12, seed=1, ext=".jpg")
    (tmp_path / "corrupt" / "frame7.jpg").write_bytes((tmp_path / "corrupt" / "frame7.jpg").read_bytes()[:300])
    write_sequence(tmp_path / "mixed", 12, seed=2)
    Image.fromarray(_texture(0, 100, 84)).save(tmp_path / "mixed" / "frame9.png")
    spec = _spec(tmp_path)
    sources = discover(spec)
    for source in sources:
        errors = []
        for threads in (1, 4):
            with pytest.raises(InputError) as exc:
                decode_sequence(source, spec, threads=threads)
            errors.append(str(exc.value))
        assert errors[0] == errors[1], errors
    assert {s.sequence_id for s in sources} == {"corrupt", "mixed"}


def test_frames_are_kept_in_order_with_a_bounded_number_in_the_works():
    import threading
    import time

    from pipeline.decode import _in_order

    threads, kept, lock = 3, [], threading.Lock()
    taken, running, most_running = [0], [0], [0]

    def items():
        for i in range(40):
            taken[0] += 1
            assert taken[0] - len(kept) <= 2 * threads  # taken and not yet kept
            yield i

    def work(i):
        with lock:
            running[0] += 1
            most_running[0] = max(most_running[0], running[0])
        time.sleep(0.01 * (i % 3))  # later items often finish first
        with lock:
            running[0] -= 1
        return i * i

    _in_order(items(), work, kept.append, threads)
    assert kept == [i * i for i in range(40)] and most_running[0] == threads

    def failing(i):
        if i == 7:
            raise ValueError("frame 7 is bad")
        return i

    kept.clear()
    with pytest.raises(ValueError, match="frame 7 is bad"):
        _in_order(range(100), failing, kept.append, threads)
    assert kept == list(range(7))


def test_a_decode_task_runs_with_the_threads_of_the_plan(ray_cluster, tmp_path):
    """Through Ray as the pipeline decodes: a task of resources.decode_cpus CPUs uses that many
    threads, and its pixels are the one-thread decode's."""
    import ray

    from pipeline.execution import RayExecutor, plan_actors

    encode_video(tmp_path / "clip.mp4", (_texture(i) for i in range(9)))
    spec = _spec(tmp_path, resources__decode_cpus=2)
    plan = plan_actors(spec, ray.cluster_resources())
    assert plan.decode_cpus == 2
    (source,) = discover(spec)
    decoded = ray.get(RayExecutor(spec, plan).decode(source))
    assert decoded.threads == 2 and decoded.num_frames == 9
    np.testing.assert_array_equal(decoded.pixels, decode_sequence(source, spec, threads=1).pixels)
