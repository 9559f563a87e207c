"""Throughput of the whole pipeline vs the engine alone, on the same sequences.

    # on a GPU machine, real model:
    python bench/pipeline_throughput.py --preset offline_ref_view --checkpoint s3://.../ckpt.pt \
        --device cuda --size 518 --sequences 16 --frames 32
    # CPU smoke check:
    python bench/pipeline_throughput.py --preset tiny --device cpu

"engine" is `reconstruct` over already-decoded images in this process (model inference and
frame extraction only). "pipeline" is `run_job`: decoding tasks, model actors, output writing
and commits. The steady-state figure leaves out actor start-up (model build + checkpoint load)
by measuring from the n-th commit (n actors: start-up is then behind every actor) to the last.
The ratio says how much of the engine's speed the pipeline keeps; divide by the number of actors
when comparing several GPUs to one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    import torch

    work, input_prefix = prepare_inputs(args, "zipmap-bench-")
    if args.device == "cpu":
        torch.set_num_threads(max(1, int(args.cpus_per_actor)))  # what one CPU actor gets
    engine = _bench_engine(args, input_prefix)
    if args.device == "cuda":
        torch.cuda.empty_cache()  # the engine's model is gone; leave the GPU to the actors
    pipeline = _bench_pipeline(args, input_prefix, str(work / "output"))
    ratio = pipeline["steady_frames_per_s"] / engine["frames_per_s"] if engine["frames_per_s"] else float("nan")
    result = {"engine": engine, "pipeline": pipeline, "ratio": ratio, "ratio_per_actor": ratio / pipeline["num_actors"]}
    print(
        f"engine alone : {engine['frames_per_s']:9.2f} frames/s ({engine['frames']} frames, {engine['seconds']:.2f}s)"
    )
    print(
        f"pipeline     : {pipeline['steady_frames_per_s']:9.2f} frames/s steady state, "
        f"{pipeline['frames_per_s']:.2f} frames/s end to end "
        f"({pipeline['seconds']:.2f}s, {pipeline['num_actors']} actor(s))"
    )
    print(f"ratio        : {ratio:9.3f} (pipeline / engine), {result['ratio_per_actor']:.3f} per actor")
    print(
        f"inference    : {pipeline['median_infer_s']:9.3f} s per sequence in the actor (median), "
        f"{engine['median_sequence_s']:.3f} s alone"
    )
    idle = pipeline["engine_idle"]
    print(
        f"engine idle  : {idle['median_gap_s']:9.3f} s between sequences (median; max {idle['max_gap_s']:.3f}), "
        f"busy {idle['busy_share']:.1%} of the time from its first sequence's start to its last one's end"
    )
    print(json.dumps(result))
    return result


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p)
    p.add_argument("--num-actors", type=int, default=None)
    return resolve_size(p.parse_args(argv))


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """What a pipeline run of this benchmark is made of (shared with pipeline_scaling.py)."""
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint", help="default: random weights (saved to the workdir for presets other than tiny)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--input", help="an input prefix (default: synthetic sequences)")
    p.add_argument("--sequences", type=int, default=6)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=None, help="model input width (default: the preset's img_size)")
    p.add_argument("--engine-mode", default="offline", choices=["offline", "chunked", "streaming"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--fast", action="store_true", help="the GPU fast path (bf16 weights; needs --dtype bfloat16)")
    p.add_argument("--compile", action="store_true", help="the fast path compiled (each process compiles once)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--frame-writers", type=int, default=None, help="processes per actor (default: cpus - 1)")
    p.add_argument("--in-flight", type=int, default=4, help="sequences in flight per actor")
    p.add_argument("--decode-cpus", type=float, default=None,
                   help="CPUs per decode task: FFmpeg's and the frame threads (default: the spec's, chosen per run)")
    p.add_argument("--workdir", help="where synthetic inputs and outputs go (default: a temp dir)")


def resolve_size(args: argparse.Namespace) -> argparse.Namespace:
    if args.size is None:
        from zipmap_core.config import ModelConfig

        args.size = ModelConfig.preset(args.preset).img_size
    return args


def prepare_inputs(args: argparse.Namespace, temp_prefix: str) -> tuple[Path, str]:
    """(work folder, input prefix): synthetic sequences unless --input, and a random checkpoint
    in the work folder unless --checkpoint (tiny models are built from the seed instead)."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix=temp_prefix))
    input_prefix = args.input or str(_synthesize(work / "input", args))
    if args.checkpoint is None and args.preset != "tiny":
        args.checkpoint = _random_checkpoint(work, args.preset)
    return work, input_prefix


def _synthesize(folder: Path, args) -> Path:
    """Smooth random images, 4:3, as many sequences and frames as asked."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = args.size, args.size * 3 // 4
    yy, xx = np.mgrid[0:h, 0:w]
    for s in range(args.sequences):
        seq = folder / f"seq{s:04d}"
        seq.mkdir(parents=True, exist_ok=True)
        for f in range(args.frames):
            base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, (37 * f + 11 * s) % 255)], -1)
            img = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(seq / f"{f:05d}.jpg", quality=95)
    return folder


def _random_checkpoint(work: Path, preset: str) -> str:
    """Random weights of `preset` as a checkpoint file: the speed of a real one, no download."""
    import torch

    from zipmap_core.checkpoint import save_checkpoint
    from zipmap_core.config import ModelConfig
    from zipmap_core.models.zipmap import ZipMap

    path = work / f"random-{preset}.pt"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(ZipMap(ModelConfig.preset(preset)), str(path))
    return str(path)


def _spec(args, input_prefix: str, output: str):
    from pipeline.spec import load_spec

    return load_spec(
        {
            "input": {"prefix": input_prefix},
            "output": output,
            "run_id": f"bench-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}",
            "model": {
                "preset": args.preset,
                "checkpoint": args.checkpoint,
                "allow_random_weights": args.checkpoint is None,
            },
            "engine": {"mode": args.engine_mode, "dtype": args.dtype, "fast": args.fast, "compile": args.compile},
            "preprocess": {"size": args.size},
            "resources": {
                "device": args.device,
                "num_actors": args.num_actors,
                "cpus_per_actor": args.cpus_per_actor,
                "frame_writers": args.frame_writers,
                "max_in_flight_per_actor": args.in_flight,
                "decode_cpus": args.decode_cpus,
            },
        }
    )


def _bench_engine(args, input_prefix: str) -> dict:
    """Decoded images in memory, then only the engine is timed (after one warm-up sequence)."""
    from pipeline.decode import decode_sequence
    from pipeline.discovery import discover

    spec = _spec(args, input_prefix, "/unused").with_run_id()
    return time_engine(spec, [decode_sequence(s, spec).images() for s in discover(spec)])


def time_engine(spec, sequences: list) -> dict:
    """The engine alone over float image tensors, timed after one warm-up sequence."""
    import torch

    from pipeline.actors import build_model
    from zipmap_core.engines import reconstruct

    model, device = build_model(spec)  # exactly what a model actor builds

    def run(images):
        with torch.inference_mode():
            for _ in reconstruct(model, images, spec.engine, device=device):
                pass
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(sequences[0])  # warm-up: kernels, allocator
    per_sequence = []
    for images in sequences:
        begin = time.perf_counter()
        run(images)
        per_sequence.append(time.perf_counter() - begin)
    seconds = sum(per_sequence)
    frames = sum(int(x.shape[0]) for x in sequences)
    return {
        "frames": frames,
        "seconds": seconds,
        "frames_per_s": frames / seconds,
        "median_sequence_s": statistics.median(per_sequence),
    }


def _bench_pipeline(args, input_prefix: str, output: str) -> dict:
    import ray

    from pipeline import read_outputs, run_job
    from pipeline.cluster import connect
    from pipeline.execution import plan_actors

    spec = _spec(args, input_prefix, output)
    started = connect()  # local Ray, or the cluster of RAY_ADDRESS
    try:
        plan = plan_actors(spec, ray.cluster_resources(), fixed_size=started)
        num_actors, ray_cpus = plan.num_actors, ray.cluster_resources().get("CPU", 0.0)
        start = time.perf_counter()
        summary = run_job(spec, raise_on_failure=False)  # failures end the benchmark below, with their errors
        seconds = time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()
    if summary.failed:
        raise SystemExit(f"pipeline run had failures: {summary.failures}")
    outputs = read_outputs(summary.run_uri)
    markers = sorted(outputs.committed.values(), key=lambda m: m.committed_at)
    stamps = [dt.datetime.fromisoformat(m.committed_at) for m in markers]
    # Steady state starts once every actor has committed a sequence (start-up is then behind all).
    first = min(num_actors, len(markers)) - 1
    steady_frames = sum(m.num_frames for m in markers[first + 1 :])
    span = (stamps[-1] - stamps[first]).total_seconds() if len(stamps) > first + 1 else 0.0
    return {
        "frames": summary.frames,
        "seconds": seconds,
        "frames_per_s": summary.frames / seconds,
        "steady_frames_per_s": steady_frames / span if span > 0 else summary.frames / seconds,
        "num_actors": num_actors,
        # what the run ran with (decode CPUs as the run chose them when the spec leaves them open)
        "settings": {
            "ray_cpus": ray_cpus, "cpus_per_actor": plan.num_cpus, "decode_cpus": plan.decode_cpus,
            "decode_cpus_auto": spec.resources.decode_cpus is None,
            "in_flight_per_actor": spec.resources.max_in_flight_per_actor,
            "frame_writers": spec.resources.frame_writer_processes,
        },
        "run_uri": summary.run_uri,
        # inference of one sequence inside an actor, beside the other sequences' writing
        "median_infer_s": statistics.median(outputs.manifest.column("infer_s").to_pylist()),
        "engine_idle": engine_idle(summary.run_uri),
    }


def engine_idle(run_uri: str) -> dict:
    """How long the engine processes waited between sequences, from the commit markers' stamps
    (pipeline.engine_process: when each sequence started and ended in its engine)."""
    import glob
    import os

    runs: dict[int, list[tuple[float, float]]] = {}
    for path in glob.glob(os.path.join(run_uri, "_commits", "*.json")):
        with open(path) as f:
            marker = json.load(f)
        t = marker.get("timings", {})
        if "engine_start" in t:
            runs.setdefault(marker["worker"].get("engine_pid", 0), []).append((t["engine_start"], t["engine_end"]))
    gaps, busy, span = [], 0.0, 0.0
    for spans in runs.values():
        spans.sort()
        gaps += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
        busy += sum(end - start for start, end in spans)
        span += spans[-1][1] - spans[0][0]
    return {
        "median_gap_s": statistics.median(gaps) if gaps else 0.0,
        "max_gap_s": max(gaps) if gaps else 0.0,
        "busy_share": busy / span if span else 1.0,
    }


if __name__ == "__main__":
    main()
