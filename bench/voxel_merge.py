"""Voxel point clouds: what a frame-writer process and what the actor's main thread pay per frame.

    python bench/voxel_merge.py --frames 100 --points 200000 --voxel-sizes 0.005 0.02

Synthetic frames of surface-like points (a 4 m x 3 m wall seen by a sliding camera, 1 cm of
noise). Each frame's points are summed per voxel (`voxel_sums`, in a writer process in the
pipeline), then merged into the sequence's grid (`VoxelGrid.add_sums`, the main thread, which the
engine thread's kernel launches share the GIL with).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from pipeline.pointcloud import PLY_DTYPE, VoxelGrid, voxel_sums


def synthetic_frames(frames: int, points: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for f in range(frames):
        p = np.empty(points, PLY_DTYPE)
        p["x"] = rng.random(points) * 4 + f * 0.01
        p["y"] = rng.random(points) * 3
        p["z"] = 2 + 0.01 * rng.standard_normal(points)
        p["red"] = p["green"] = p["blue"] = rng.integers(0, 256, points)
        p["confidence"] = 1 + rng.random(points)
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--voxel-sizes", type=float, nargs="+", default=[0.005, 0.02])
    args = ap.parse_args(argv)
    frames = synthetic_frames(args.frames, args.points)
    results = []
    for size in args.voxel_sizes:
        start = time.perf_counter()
        sums = [voxel_sums(p, size) for p in frames]
        per_frame = (time.perf_counter() - start) / args.frames
        grid = VoxelGrid(size)
        start = time.perf_counter()
        for s in sums:
            grid.add_sums(s)
        voxels = len(grid.result())
        merge = (time.perf_counter() - start) / args.frames
        rows = sum(len(s[0].keys) + len(s[1].keys) for s in sums) / args.frames
        print(f"voxel {size:g}: writer process {per_frame * 1e3:.1f} ms/frame, main thread {merge * 1e3:.1f} ms/frame "
              f"({args.points} points -> {rows:.0f} voxel rows per frame, {voxels} voxels in all)")
        results.append({"voxel_size": size, "writer_s": per_frame, "main_thread_s": merge, "rows_per_frame": rows,
                        "voxels": voxels})
    return results


if __name__ == "__main__":
    main()
