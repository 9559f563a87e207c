"""python -m zipmap_core.synthetic --out DIR --num-sequences N --frames F --height H --width W --seed S"""

from __future__ import annotations

import argparse
import time

from .dataset import generate_dataset
from .scenes import SCENES
from .trajectories import TRAJECTORIES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m zipmap_core.synthetic", description=__doc__)
    parser.add_argument("--out", required=True, help="output folder (any fsspec URL)")
    parser.add_argument("--num-sequences", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=140, help="pixels; a multiple of 14 suits the model")
    parser.add_argument("--width", type=int, default=182)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scene", choices=SCENES, default=None, help="default: cycle through all")
    parser.add_argument("--trajectory", choices=TRAJECTORIES, default=None, help="default: cycle through all")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folders = generate_dataset(
        args.out,
        args.num_sequences,
        args.seed,
        args.frames,
        args.height,
        args.width,
        scene=args.scene,
        trajectory=args.trajectory,
        device=args.device,
    )
    print(f"wrote {len(folders)} sequences to {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
