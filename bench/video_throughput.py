"""Pipeline frames/s on real-codec 1080p videos against the engine alone on the same frames, and
what decoding them costs per CPU core.

    # one H200, 16 cores (about 3 minutes; see bench/device/README.md for the Ray + PyAV bundle):
    python bench/video_throughput.py --preset offline_affine --device cuda --size 518 \
        --videos 8 --frames 240 --dtype bfloat16 --fast --cpus-per-actor 8
    # CPU smoke check:
    python bench/video_throughput.py --preset tiny --device cpu --videos 2 --frames 6 --width 224 --height 126

1. Encodes `--videos` H.264 videos (libx264, the codec phones write; PyAV, in parallel) of a
   textured scene panning past the camera, at `--bit-rate` (default 8 Mbit/s, a phone's 1080p30).
2. Decodes them exactly as the pipeline's decode tasks do (`pipeline.decode.decode_sequence`:
   FFmpeg decode, RGB, PIL bicubic resize to the model input), one process per video with one
   FFmpeg thread, and reports frames per CPU-second: decode frames/s per core. One video is also
   taken apart: FFmpeg decoding alone, plus the RGB conversion, plus the resize.
3. Times the engine alone on those decoded frames (`pipeline_throughput.time_engine`: the model a
   model actor builds, after a warm-up sequence).
4. Runs the pipeline on the videos (local Ray, one actor) and takes its steady-state frames/s.

It prints the ratio pipeline / engine (target >= 0.90) and how many cores per GPU decoding needs
to keep up with the engine (engine frames/s / decode frames/s per core).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_throughput as throughput  # noqa: E402  (the spec, the engine timing, the pipeline run)

# fork: workers start at once, without importing this script again
_POOL = multiprocessing.get_context("fork")


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="zipmap-video-bench-"))
    if args.checkpoint is None and args.preset != "tiny":
        args.checkpoint = throughput._random_checkpoint(work, args.preset)
    videos = work / "videos"
    encode = _encode_all(args, videos)
    spec = throughput._spec(args, str(videos), "/unused").with_run_id()
    decode, sequences = _decode_all(spec, args)
    breakdown = _decode_breakdown(sorted(videos.glob("*.mp4"))[0], args.size)

    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, int(args.cpus_per_actor)))  # what one CPU actor gets
    engine = throughput.time_engine(spec, [torch.from_numpy(s.astype(np.float32) / 255.0) for s in sequences])
    del sequences
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the engine's model is gone; leave the GPU to the actor
    pipeline = throughput._bench_pipeline(args, str(videos), str(work / "output"))
    ratio = pipeline["steady_frames_per_s"] / engine["frames_per_s"]
    cores = engine["frames_per_s"] / decode["frames_per_core_s"]
    result = {
        "encode": encode, "decode": decode, "decode_breakdown_ms": breakdown,
        "engine": engine, "pipeline": pipeline, "ratio": ratio, "decode_cores_per_gpu": cores,
    }
    _print(args, result)
    return result


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    throughput.add_run_arguments(p)
    p.set_defaults(dtype="bfloat16", fast=True, sequences=None, frames=240)
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--rate", type=int, default=30, help="video frame rate")
    p.add_argument("--bit-rate", type=int, default=8_000_000)
    p.add_argument("--processes", type=int, default=os.cpu_count(), help="for encoding and the decode measurement")
    args = throughput.resolve_size(p.parse_args(argv))
    args.num_actors = 1
    if args.device == "cpu":
        args.fast, args.dtype = False, "float32"  # the fast path is a GPU path
    return args


# --- 1. encoding -----------------------------------------------------------------------------


def _encode_all(args, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"video{i:03d}.mp4"), i, args.frames, args.width, args.height, args.rate, args.bit_rate)
            for i in range(args.videos)]
    begin = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(args.processes, args.videos)), mp_context=_POOL) as pool:
        list(pool.map(_encode_one, jobs))
    seconds = time.perf_counter() - begin
    size = sum(Path(j[0]).stat().st_size for j in jobs)
    return {"videos": args.videos, "frames": args.videos * args.frames, "seconds": seconds, "bytes": size}


def _encode_one(job) -> None:
    from pipeline.testing.media import encode_video

    path, seed, frames, width, height, rate, bit_rate = job
    rng = np.random.default_rng(seed)
    # a wide texture (smooth shapes plus fine noise) that the camera pans across
    coarse = rng.integers(0, 256, (height // 32 + 2, (width + 4 * frames) // 32 + 2, 3), dtype=np.uint8)
    scene = np.asarray(_upscale(coarse, 32)[:height, : width + 4 * frames], np.int16)
    scene = np.clip(scene + rng.integers(-12, 13, scene.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    encode_video(
        path, (scene[:, 4 * i : 4 * i + width] for i in range(frames)), rate=rate, bit_rate=bit_rate,
        options={"preset": "veryfast", "threads": "2"},
    )


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w * factor, h * factor), Image.Resampling.BILINEAR))


# --- 2. decoding -----------------------------------------------------------------------------


def _decode_all(spec, args) -> tuple[dict, list[np.ndarray]]:
    """Every video decoded as a decode task would (one FFmpeg thread), one process each."""
    from pipeline.discovery import discover

    sources = discover(spec)
    begin = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(args.processes, len(sources))), mp_context=_POOL) as pool:
        results = list(pool.map(_decode_one, [(s, spec) for s in sources]))
    wall = time.perf_counter() - begin
    frames = sum(r["frames"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    summary = {
        "frames": frames, "wall_s": wall, "cpu_s": cpu, "processes": min(args.processes, len(sources)),
        "frames_per_core_s": frames / cpu, "frames_per_s_all_processes": frames / wall,
    }
    return summary, [r["pixels"] for r in results]


def _decode_one(job) -> dict:
    import av  # noqa: F401  (imported before timing, as in a decode worker that decoded before)
    import torch

    from pipeline.decode import decode_sequence

    torch.set_num_threads(1)
    source, spec = job
    begin = time.process_time()
    decoded = decode_sequence(source, spec)
    return {"frames": decoded.num_frames, "cpu_s": time.process_time() - begin, "pixels": decoded.pixels}


def _decode_breakdown(path: Path, size: int) -> dict:
    """CPU milliseconds per frame of the steps of decoding one video, cumulative."""
    import av

    from zipmap_core.images import FrameBuffer

    steps = {"ffmpeg decode": 0.0, "+ RGB": 0.0, "+ resize": 0.0}
    resized = FrameBuffer(size=size)
    with av.open(str(path)) as container:
        frames = container.decode(container.streams.video[0])
        while True:
            t0 = time.process_time()
            frame = next(frames, None)
            t1 = time.process_time()
            if frame is None:
                break
            image = frame.to_image()
            t2 = time.process_time()
            resized.add(image)
            t3 = time.process_time()
            steps["ffmpeg decode"] += t1 - t0
            steps["+ RGB"] += t2 - t0
            steps["+ resize"] += t3 - t0
    return {k: 1000 * v / len(resized) for k, v in steps.items()}


# --- report ----------------------------------------------------------------------------------


def _print(args, r: dict) -> None:
    enc, dec, eng, pipe = r["encode"], r["decode"], r["engine"], r["pipeline"]
    print(f"\n{args.videos} videos x {args.frames} frames, {args.width}x{args.height} H.264 at "
          f"{args.bit_rate / 1e6:g} Mbit/s, model input {args.size} wide, {args.preset}, {args.device}, "
          f"{args.dtype}{' fast' if args.fast else ''}")
    print("| stage | frames | seconds | frames/s |")
    print("|---|---|---|---|")
    print(f"| encode ({min(args.processes, args.videos)} processes) | {enc['frames']} | {enc['seconds']:.1f} | "
          f"{enc['frames'] / enc['seconds']:.1f} |")
    print(f"| decode, per core (1 FFmpeg thread, {dec['processes']} processes) | {dec['frames']} | "
          f"{dec['cpu_s']:.1f} CPU | {dec['frames_per_core_s']:.1f} |")
    print(f"| engine alone | {eng['frames']} | {eng['seconds']:.2f} | {eng['frames_per_s']:.1f} |")
    print(f"| pipeline, steady state | {pipe['frames']} | {pipe['seconds']:.2f} end to end | "
          f"{pipe['steady_frames_per_s']:.1f} |")
    steps = ", ".join(f"{k} {v:.2f}" for k, v in r["decode_breakdown_ms"].items())
    print(f"decode CPU ms per frame (cumulative): {steps}")
    idle = pipe["engine_idle"]
    print(f"inference per sequence: {pipe['median_infer_s']:.3f} s in the pipeline (median), "
          f"{eng['median_sequence_s']:.3f} s alone; engine idle between sequences {idle['median_gap_s']:.3f} s "
          f"(median), busy {idle['busy_share']:.1%}")
    print(f"ratio pipeline / engine: {r['ratio']:.3f} (target >= 0.90)")
    print(f"decode cores per GPU to keep up with the engine: {r['decode_cores_per_gpu']:.1f}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
