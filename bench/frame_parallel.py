"""One sequence on 1 and on 2 GPUs (the frame-parallel chunked engine): time, frames/s, peak GPU
memory per GPU, scaling, and how far the 2-GPU result is from the 1-GPU one.

    python bench/frame_parallel.py            # a host with 2 GPUs: 5000 and 10000 frames

Two processes (one per GPU, NCCL) start once and build the same full-size random model (rank 0's
weights broadcast). Each warms up alone (compilation, two chunk counts), then pins the host memory
its store will use (--prepin-gb, both processes at once, timed separately: pinning costs about a
second per GB, and a long-lived actor pays it once), then for every length: G=1 on GPU 0 (the other
process waits), G=2 on both GPUs, each owning a contiguous half. Images start in host memory: 97
distinct random frames, cycled. Every frame's depth and cameras reach the host and are copied into
an array, which is the cost a writer pays and what the comparison reads afterwards. A run that the
time budget (--time-limit-s, from the start of the script) would not hold is skipped and reported.

Defaults follow the README's long-sequence table: offline_affine, 392x518, chunked 64, compiled
fast path (bf16), depth head only, GPU cache 6 GiB, host budget 64 GiB per process. Without two
GPUs: `--backend gloo --prepin-gb 0 --host-budget-gb 24` runs both processes on one GPU (exactness
holds, the speed is meaningless).
CPU smoke test: `--device cpu --preset tiny --frames 5 7 --height 28 --width 42 --chunk-size 2`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from timing import pinned_gib  # bench/timing.py (this script's folder is on sys.path)

from zipmap_core import EngineConfig, ModelConfig, ZipMap, frame_shares, reconstruct, reconstruct_distributed
from zipmap_core.engines.frame_parallel import spawn

DISTINCT_FRAMES = 97  # prime: the cycle never lines up with chunks or shares
SLAB = 2**31  # the chunked store's pinned slab size (store.PinnedPool)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--frames", type=int, nargs="+", default=[5000, 10000])
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--backend", choices=["nccl", "gloo"], default=None, help="default: nccl on GPUs, gloo on CPU")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on GPUs, float32 on CPU")
    ap.add_argument("--newton-schulz", choices=["bfloat16", "float32"], default="bfloat16",
                    help="the TTT orthogonalisation: bfloat16 as released, float32 exact")
    ap.add_argument("--eager", action="store_true", help="no torch.compile (on CPU: always eager, no fast path)")
    ap.add_argument("--head-inputs", choices=["auto", "keep", "recompute"], default="auto",
                    help="auto keeps the dense heads' inputs when a process's share fits its budgets, so at "
                         "10000 frames 1 GPU may rerun the trunk for the heads where 2 GPUs do not")
    ap.add_argument("--gpu-cache-gb", type=float, default=6.0)
    ap.add_argument("--host-budget-gb", type=float, default=64.0)
    ap.add_argument("--prepin-gb", type=float, default=40.0, help="pinned host memory per process, before timing")
    ap.add_argument("--time-limit-s", type=float, default=520.0, help="runs that would end past it are skipped")
    ap.add_argument("--workdir", default=None, help="where the 1-GPU depth maps are kept for the comparison")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    args.backend = args.backend or ("nccl" if cuda else "gloo")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.fast = cuda and args.dtype != "float32"
    args.compile = args.fast and not args.eager
    if not cuda:
        args.prepin_gb = 0.0
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.backend == "nccl" and torch.cuda.device_count() < 2:
        raise SystemExit("NCCL needs 2 GPUs; on one GPU use --backend gloo (exactness only, no speed)")
    with tempfile.TemporaryDirectory(prefix="zipmap-fp-", dir=args.workdir) as workdir:
        spawn(worker, 2, args, workdir, time.perf_counter(), backend=args.backend)
        result = json.loads((Path(workdir) / "result.json").read_text())
    print_tables(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def images_for(start: int, stop: int, height: int, width: int) -> torch.Tensor:
    """Frames [start, stop) of the benchmark sequence: the same frames whatever the share."""
    pool = torch.rand(DISTINCT_FRAMES, 3, height, width, generator=torch.Generator().manual_seed(0))
    return pool[torch.arange(start, stop) % DISTINCT_FRAMES]


def worker(rank: int, args: argparse.Namespace, workdir: str, started: float) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if args.device == "cuda" else "cpu")
    log = (lambda msg: print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)) if rank == 0 else None
    torch.manual_seed(0)
    with torch.device(device):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, 0)  # the same weights in both processes, whatever the device's RNG
    engine = EngineConfig(
        mode="chunked", chunk_size=args.chunk_size, dtype=args.dtype, fast=args.fast, compile=args.compile,
        newton_schulz=args.newton_schulz, head_inputs=args.head_inputs,
        gpu_cache_gb=args.gpu_cache_gb, host_memory_budget_gb=args.host_budget_gb,
    )
    one, two = engine.model_copy(update={"frame_parallel": 1}), engine.model_copy(update={"frame_parallel": 2})

    start = time.perf_counter()
    for n in (4, 2 * args.chunk_size + 3):  # two chunk counts: compiled code then takes any frame count
        list(reconstruct(model, images_for(0, n, args.height, args.width), one, device=device))
    n = 2 * args.chunk_size + 3
    share = frame_shares(n, 2)[rank]
    list(reconstruct_distributed(model, images_for(*share, args.height, args.width), two, device=device))
    dist.barrier()
    result = {"args": {k: v for k, v in vars(args).items()}, "warmup_s": time.perf_counter() - start, "rows": []}
    result["prepin"] = everyone(prepin(args.prepin_gb))
    if log:
        log(f"warm-up {result['warmup_s']:.0f} s; pinned {args.prepin_gb:g} GiB per process in "
            + ", ".join(f"{p['seconds']:.0f} s" for p in result["prepin"]))

    g1_rate = None  # seconds per frame of the last 1-GPU run (rank 0), for the time budget
    for n in args.frames:
        ref_path, depth_path = Path(workdir) / f"g1-{n}.npz", Path(workdir) / f"g1-depth-{n}.npy"
        skip = everyone(over_budget(g1_rate, n, args, started) if rank == 0 else None)[0]  # one decision
        row = {"frames": n, "gpus": 1}
        if skip:
            row["skipped"] = skip
        else:
            stats, arrays = timed_run(model, 0, n, one, device, args, depth_path if rank == 0 else None, rank == 0)
            if rank == 0:
                g1_rate = stats["time_s"] / n
                np.savez(ref_path, extrinsic=arrays["extrinsic"], intrinsic=arrays["intrinsic"])
            row.update(everyone(stats)[0])
        result["rows"].append(row)
        if log:
            log(f"{n} frames, 1 GPU: {describe(row)}")
        save(result, workdir, rank)

        skip = everyone(over_budget(g1_rate and g1_rate / 1.8, n, args, started) if rank == 0 else None)[0]
        row = {"frames": n, "gpus": 2}
        if skip:
            row["skipped"] = skip
        else:
            first, last = frame_shares(n, 2)[rank]
            stats, arrays = timed_run(model, first, last, two, device, args, None, True)
            if ref_path.exists():
                stats["differences"] = differences(arrays, np.load(ref_path), np.load(depth_path, mmap_mode="r"), first)
            per_process = everyone(stats)
            row.update(
                time_s=max(p["time_s"] for p in per_process),  # both started together (a barrier)
                per_process=per_process,
                differences=combine([p.get("differences") for p in per_process]),
            )
        result["rows"].append(row)
        if log:
            log(f"{n} frames, 2 GPUs: {describe(row)}")
        save(result, workdir, rank)


def over_budget(seconds_per_frame: float | None, n: int, args, started: float) -> str | None:
    """Why a run of n frames is skipped (None: it fits), predicted from the last 1-GPU run."""
    left = args.time_limit_s - (time.perf_counter() - started)
    if seconds_per_frame is not None and 1.1 * seconds_per_frame * n > left:
        return f"predicted {seconds_per_frame * n:.0f} s, {max(left, 0):.0f} s left of --time-limit-s"
    return None


def timed_run(model, start: int, stop: int, engine, device, args, depth_path, participate: bool):
    """Frames [start, stop) through the engine in this process (a 1-GPU run: only if `participate`),
    all processes starting together. -> (stats, arrays: depth (in a file when depth_path is given)
    and cameras)."""
    if not participate:  # the other process of a 1-GPU run waits for it
        dist.barrier()
        dist.barrier()
        return {}, {}
    n = stop - start
    images = images_for(start, stop, args.height, args.width)
    shape = (n, args.height, args.width)
    if depth_path is None:
        depth = np.empty(shape, np.float32)
    else:
        depth = np.lib.format.open_memmap(depth_path, mode="w+", dtype=np.float32, shape=shape)
    depth.fill(0)  # touch every page before timing
    extrinsic, intrinsic = np.empty((n, 3, 4), np.float32), np.empty((n, 3, 3), np.float32)
    cuda = device.type == "cuda"
    group_run = engine.frame_parallel == 2
    frames = (reconstruct_distributed(model, images, engine, device=device) if group_run
              else reconstruct(model, images, engine, device=device))
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    dist.barrier()
    t0 = time.perf_counter()
    for f in frames:
        i = f.index - start
        depth[i], extrinsic[i], intrinsic[i] = f.depth, f.extrinsic, f.intrinsic
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if not group_run:
        dist.barrier()
    if depth_path is not None:
        depth.flush()
    stats = {
        "time_s": seconds, "frames_per_s": n / seconds,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "pinned_gib": pinned_gib() if cuda else None,
    }
    return stats, {"depth": depth, "extrinsic": extrinsic, "intrinsic": intrinsic}


def differences(mine: dict, ref_cameras, ref_depth: np.ndarray, start: int, block: int = 256) -> dict:
    """This share's 2-GPU result against the 1-GPU one, as maxima that combine over shares."""
    n = len(mine["depth"])
    depth_abs = depth_rel = depth_max = 0.0
    for s in range(0, n, block):
        ours = mine["depth"][s : s + block]
        ref = np.asarray(ref_depth[start + s : start + s + len(ours)])
        diff = np.abs(ours - ref)
        depth_abs = max(depth_abs, float(diff.max()))
        depth_rel = max(depth_rel, float((diff / np.abs(ref)).max()))
        depth_max = max(depth_max, float(np.abs(ref).max()))
    ext, ref_ext = mine["extrinsic"], ref_cameras["extrinsic"][start : start + n]
    # the angle between two rotations from the Frobenius norm of their difference: exact for small
    # angles, where arccos of the trace loses half the digits
    chord = np.linalg.norm((ext[:, :, :3] - ref_ext[:, :, :3]).astype(np.float64), axis=(1, 2)) / (2 * np.sqrt(2))
    return {
        "depth_abs": depth_abs, "depth_max": depth_max, "depth_rel_per_pixel": depth_rel,
        "translation_abs": float(np.abs(ext[:, :, 3] - ref_ext[:, :, 3]).max()),
        "translation_max": float(np.abs(ref_ext[:, :, 3]).max()),
        "rotation_deg": float(np.degrees(2 * np.arcsin(np.clip(chord, 0, 1))).max()),
        "focal_rel": float(np.abs(focal(mine["intrinsic"]) / focal(ref_cameras["intrinsic"][start:][:n]) - 1).max()),
    }


def focal(intrinsic: np.ndarray) -> np.ndarray:
    return intrinsic[:, [0, 1], [0, 1]]


def combine(parts: list[dict | None]) -> dict | None:
    if any(p is None for p in parts):
        return None
    out = {k: max(p[k] for p in parts) for k in parts[0]}
    out["depth_of_max"] = out["depth_abs"] / out["depth_max"]
    out["translation_of_max"] = out["translation_abs"] / out["translation_max"]
    return out


def prepin(gib: float) -> dict:
    """Pin whole slabs of the store's size and free them: the caching host allocator keeps them,
    and the store's requests for slabs come back from that cache without pinning again."""
    start = time.perf_counter()
    slabs = [torch.empty(SLAB, dtype=torch.uint8, pin_memory=True) for _ in range(int(gib * 2**30) // SLAB)]
    del slabs
    return {"gib": gib, "seconds": time.perf_counter() - start}


def everyone(obj) -> list:
    """obj of every process, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def save(result: dict, workdir: str, rank: int) -> None:
    if rank == 0:  # after every row: a run cut short still leaves what it measured
        (Path(workdir) / "result.json").write_text(json.dumps(result, indent=1))


def describe(row: dict) -> str:
    if "skipped" in row:
        return "skipped, " + row["skipped"]
    return f"{row['time_s']:.1f} s, {row['frames'] / row['time_s']:.0f} frames/s"


def print_tables(result: dict) -> None:
    a = result["args"]
    print(f"\n{a['preset']}, {a['height']}x{a['width']}, chunk {a['chunk_size']}, {a['dtype']}, "
          f"{'compiled ' if a['compile'] else ''}{'fast path' if a['fast'] else 'eager'}, "
          f"Newton-Schulz {a['newton_schulz']}, head inputs {a['head_inputs']}, {a['backend']}, "
          f"GPU cache {a['gpu_cache_gb']} GiB, host budget {a['host_budget_gb']} GiB per process, "
          f"{a['prepin_gb']:g} GiB pinned per process before timing; warm-up {result['warmup_s']:.0f} s\n")
    print("| N | GPUs | time s | frames/s | peak GiB per GPU | pinned GiB per process | scaling (target 1.8x) |")
    print("|---|---|---|---|---|---|---|")
    single = {}
    for r in result["rows"]:
        if "skipped" in r:
            print(f"| {r['frames']} | {r['gpus']} | skipped: {r['skipped']} | | | | |")
            continue
        procs = r.get("per_process", [r])
        peak = " / ".join("-" if p["peak_gib"] is None else f"{p['peak_gib']:.1f}" for p in procs)
        pinned = " / ".join("-" if p["pinned_gib"] is None else f"{p['pinned_gib']:.1f}" for p in procs)
        if r["gpus"] == 1:
            single[r["frames"]] = r["time_s"]
        scaling = single.get(r["frames"], 0) / r["time_s"] if r["frames"] in single else None
        print(f"| {r['frames']} | {r['gpus']} | {r['time_s']:.1f} | {r['frames'] / r['time_s']:.0f} | {peak} | "
              f"{pinned} | {'-' if scaling is None else f'{scaling:.2f}x'} |")
    print("\n2 GPUs against 1 GPU, largest differences over all frames:\n")
    print("| N | depth (of max depth) | depth (per pixel, relative) | translation (of max) | rotation deg | focal |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        d = r.get("differences")
        if r["gpus"] == 2 and d:
            print(f"| {r['frames']} | {d['depth_of_max']:.2e} | {d['depth_rel_per_pixel']:.2e} | "
                  f"{d['translation_of_max']:.2e} | {d['rotation_deg']:.2e} | {d['focal_rel']:.2e} |")


if __name__ == "__main__":
    main()
