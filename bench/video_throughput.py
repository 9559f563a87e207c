"""Pipeline frames/s on real-codec 1080p videos against the engine alone on the same frames, and
what decoding them costs per CPU core and per decode task.

    # one H200, 16-22 cores (about 5 minutes; bench/device/vdec.sh; see bench/device/README.md for
    # the Ray + PyAV bundle):
    python bench/video_throughput.py --preset offline_affine --device cuda --size 518 \
        --videos 8 --frames 240 --dtype bfloat16 --fast --cpus-per-actor 8 --variant decode_cpus=8
    # CPU smoke check:
    python bench/video_throughput.py --preset tiny --device cpu --videos 2 --frames 6 --width 224 --height 126

1. Encodes `--videos` H.264 videos (libx264, the codec phones write; PyAV, in parallel) of a
   textured scene panning past the camera, at `--bit-rate` (default 8 Mbit/s, a phone's 1080p30).
2. Decodes them exactly as the pipeline's decode tasks do (`pipeline.decode.decode_sequence`:
   FFmpeg decode, RGB, PIL bicubic resize to the model input), one process per video with one
   thread, and reports frames per CPU-second: decode frames/s per core. One video is also taken
   apart (FFmpeg decoding alone, plus the RGB conversion, plus the resize) and decoded by one task
   with 1, 2, 4, 8 threads (`--decode-threads`): a decode task's frames/s by its CPUs, its pixels
   checked identical to the one-thread decode.
3. Times the engine alone on those decoded frames (`pipeline_throughput.time_engine`: the model a
   model actor builds, after a warm-up sequence).
4. Runs the pipeline on the videos (local Ray with the CPUs this process may use, one actor) with
   the spec's defaults (or --decode-cpus / --in-flight) and takes its steady-state frames/s; then
   once more per `--variant` (e.g. decode_cpus=8, in_flight=6) on the same videos.

It prints the settings each pipeline run had, the ratio pipeline / engine (target >= 0.90) and how
many cores per GPU decoding needs to keep up with the engine (engine frames/s / decode frames/s
per core).
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
from contextlib import contextmanager
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
    first = sorted(videos.glob("*.mp4"))[0]
    breakdown = _decode_breakdown(first, args.size)
    scaling = _decode_scaling(spec, args.decode_threads)

    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, int(args.cpus_per_actor)))  # what one CPU actor gets
    engine = throughput.time_engine(spec, [torch.from_numpy(s.astype(np.float32) / 255.0) for s in sequences])
    del sequences
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the engine's model is gone; leave the GPU to the actor
    runs = []
    with _ray(args.ray_cpus):
        for i, override in enumerate([{}, *args.variant]):
            run_args = argparse.Namespace(**{**vars(args), **override})
            pipeline = throughput._bench_pipeline(run_args, str(videos), str(work / f"output{i}"))
            runs.append({"override": override, "pipeline": pipeline,
                         "ratio": pipeline["steady_frames_per_s"] / engine["frames_per_s"]})
            print(f"pipeline run {i} ({override or 'defaults'}): {pipeline['steady_frames_per_s']:.1f} frames/s "
                  f"steady against the engine's {engine['frames_per_s']:.1f}: {runs[-1]['ratio']:.3f}", flush=True)
    cores = engine["frames_per_s"] / decode["frames_per_core_s"]
    result = {
        "settings": _settings(args), "encode": encode, "decode": decode, "decode_breakdown_ms": breakdown,
        "decode_scaling": scaling, "engine": engine, "pipeline": runs[0]["pipeline"], "ratio": runs[0]["ratio"],
        "variants": runs[1:], "decode_cores_per_gpu": cores,
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
    cores = len(os.sched_getaffinity(0))
    p.add_argument("--processes", type=int, default=cores, help="for encoding and the decode measurement")
    p.add_argument("--decode-threads", type=int, nargs="*", default=[1, 2, 4, 8],
                   help="one decode task's threads to measure on one video (none: skip)")
    p.add_argument("--ray-cpus", type=int, default=cores,
                   help="CPUs of the local Ray cluster (default: the cores this process may use)")
    p.add_argument("--variant", type=_override, action="append", default=[],
                   help="one more pipeline run with decode_cpus=N and/or in_flight=N (comma-separated)")
    args = throughput.resolve_size(p.parse_args(argv))
    args.num_actors = 1
    if args.device == "cpu":
        args.fast, args.dtype = False, "float32"  # the fast path is a GPU path
    return args


def _override(text: str) -> dict:
    kinds = {"decode_cpus": float, "in_flight": int}
    override = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        if key.strip() not in kinds:
            raise argparse.ArgumentTypeError(f"{key!r}: a variant sets {' or '.join(kinds)}")
        override[key.strip()] = kinds[key.strip()](value)
    return override


def _settings(args) -> dict:
    names = ("preset", "device", "size", "dtype", "fast", "compile", "cpus_per_actor", "frame_writers",
             "in_flight", "decode_cpus", "videos", "frames", "width", "height", "bit_rate", "processes", "ray_cpus")
    return {"cores": len(os.sched_getaffinity(0)), **{k: getattr(args, k) for k in names}}


@contextmanager
def _ray(cpus: int):
    """A local Ray cluster of `cpus` CPUs for the pipeline runs (Ray counts the machine's cores,
    not those of a taskset), unless this process is connected to one already (tests)."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=cpus, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()


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
    decoded = decode_sequence(source, spec, threads=1)
    return {"frames": decoded.num_frames, "cpu_s": time.process_time() - begin, "pixels": decoded.pixels}


def _decode_scaling(spec, threads: list[int]) -> list[dict]:
    """One decode task's frames/s by its threads, on the first video (pixels checked identical)."""
    import av  # noqa: F401  (imported before timing)

    from pipeline.decode import decode_sequence
    from pipeline.discovery import discover

    source = sorted(discover(spec), key=lambda s: s.sequence_id)[0]
    rows, reference = [], None
    for count in threads:
        begin, cpu = time.perf_counter(), time.process_time()
        decoded = decode_sequence(source, spec, threads=count)
        wall, cpu = time.perf_counter() - begin, time.process_time() - cpu
        reference = decoded.pixels if reference is None else reference
        rows.append({
            "threads": count, "frames": decoded.num_frames, "wall_s": wall, "frames_per_s": decoded.num_frames / wall,
            "cpu_ms_per_frame": 1000 * cpu / decoded.num_frames,
            "identical": bool(np.array_equal(decoded.pixels, reference)),
        })
    return rows


def _decode_breakdown(path: Path, size: int) -> dict:
    """CPU milliseconds per frame of the steps of decoding one video, cumulative."""
    import av
    from PIL import Image

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
            image = Image.fromarray(frame.to_ndarray(format="rgb24", threads=1))  # as pipeline.decode does
            t2 = time.process_time()
            resized.add(image)
            t3 = time.process_time()
            steps["ffmpeg decode"] += t1 - t0
            steps["+ RGB"] += t2 - t0
            steps["+ resize"] += t3 - t0
    return {k: 1000 * v / len(resized) for k, v in steps.items()}


# --- report ----------------------------------------------------------------------------------


def _print(args, r: dict) -> None:
    enc, dec, eng = r["encode"], r["decode"], r["engine"]
    print(f"\n{args.videos} videos x {args.frames} frames, {args.width}x{args.height} H.264 at "
          f"{args.bit_rate / 1e6:g} Mbit/s, model input {args.size} wide, {args.preset}, {args.device}, "
          f"{args.dtype}{' fast' if args.fast else ''}; {r['settings']['cores']} cores usable, "
          f"Ray given {args.ray_cpus}")
    print("| stage | frames | seconds | frames/s |")
    print("|---|---|---|---|")
    print(f"| encode ({min(args.processes, args.videos)} processes) | {enc['frames']} | {enc['seconds']:.1f} | "
          f"{enc['frames'] / enc['seconds']:.1f} |")
    print(f"| decode, per core (1 thread, {dec['processes']} processes) | {dec['frames']} | "
          f"{dec['cpu_s']:.1f} CPU | {dec['frames_per_core_s']:.1f} |")
    for row in r["decode_scaling"]:
        print(f"| one decode task, {row['threads']} thread(s) ({row['cpu_ms_per_frame']:.1f} CPU ms/frame"
              f"{'' if row['identical'] else ', PIXELS DIFFER'}) | {row['frames']} | {row['wall_s']:.2f} | "
              f"{row['frames_per_s']:.1f} |")
    print(f"| engine alone | {eng['frames']} | {eng['seconds']:.2f} | {eng['frames_per_s']:.1f} |")
    for run in [{"override": {}, "pipeline": r["pipeline"], "ratio": r["ratio"]}, *r["variants"]]:
        pipe, s = run["pipeline"], run["pipeline"]["settings"]
        how = (f"decode_cpus {s['decode_cpus']:g}{' (auto)' if s['decode_cpus_auto'] else ''}, "
               f"in flight {s['in_flight_per_actor']}, cpus_per_actor {s['cpus_per_actor']:g}, "
               f"writers {s['frame_writers']}, Ray CPUs {s['ray_cpus']:g}")
        print(f"| pipeline, steady state ({how}) | {pipe['frames']} | {pipe['seconds']:.2f} end to end | "
              f"{pipe['steady_frames_per_s']:.1f} |")
    steps = ", ".join(f"{k} {v:.2f}" for k, v in r["decode_breakdown_ms"].items())
    print(f"decode CPU ms per frame (cumulative): {steps}")
    for run in [{"override": {}, "pipeline": r["pipeline"], "ratio": r["ratio"]}, *r["variants"]]:
        pipe, idle = run["pipeline"], run["pipeline"]["engine_idle"]
        name = ", ".join(f"{k}={v:g}" for k, v in run["override"].items()) or "defaults"
        print(f"[{name}] ratio pipeline / engine: {run['ratio']:.3f} (target >= 0.90); inference per sequence "
              f"{pipe['median_infer_s']:.3f} s in the pipeline (median), {eng['median_sequence_s']:.3f} s alone; "
              f"engine idle between sequences {idle['median_gap_s']:.3f} s (median; max {idle['max_gap_s']:.3f}), "
              f"busy {idle['busy_share']:.1%}")
    print(f"decode cores per GPU to keep up with the engine: {r['decode_cores_per_gpu']:.1f}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
