"""Sequences on storage: PNG frames, `ground_truth.npz` and `meta.json` per folder, via fsspec.

A dataset is a folder of `seq_00000`, `seq_00001`, ... plus a `dataset.json` index, so any
fsspec URL (local path, memory://, s3://) can hold one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from zipmap_core.geometry import unproject_depth

from .generate import MAX_DEPTH, SyntheticSequence, generate_sequence
from .rng import derive_seed
from .scenes import SCENES
from .trajectories import TRAJECTORIES

FORMAT = "zipmap-synthetic/1"
GROUND_TRUTH_FILE = "ground_truth.npz"
META_FILE = "meta.json"
INDEX_FILE = "dataset.json"


def frame_name(index: int) -> str:
    return f"frame_{index:04d}.png"


def sequence_name(index: int) -> str:
    return f"seq_{index:05d}"


def _fs(uri: str, storage_options: dict | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs, path.rstrip("/")


def write_sequence(seq: SyntheticSequence, folder_uri: str, storage_options: dict | None = None) -> None:
    """Writes frames as PNG, the ground truth as compressed npz and a small meta.json."""
    fs, root = _fs(folder_uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    arrays = seq.arrays()
    names = [frame_name(i) for i in range(seq.num_frames)]
    for name, image in zip(names, arrays["images"]):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        fs.pipe_file(f"{root}/{name}", buffer.getvalue())
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, **{k: arrays[k] for k in ("depth", "valid", "extrinsics", "intrinsics")}
    )
    fs.pipe_file(f"{root}/{GROUND_TRUTH_FILE}", buffer.getvalue())
    meta = {
        "format": FORMAT,
        "seed": seq.seed,
        "scene": seq.scene,
        "trajectory": seq.trajectory,
        "num_frames": seq.num_frames,
        "height": seq.height,
        "width": seq.width,
        "max_depth": MAX_DEPTH,
        "frames": names,
    }
    fs.pipe_file(f"{root}/{META_FILE}", json.dumps(meta, indent=2).encode())


def read_meta(folder_uri: str, storage_options: dict | None = None) -> dict[str, Any]:
    fs, root = _fs(folder_uri, storage_options)
    return json.loads(fs.cat_file(f"{root}/{META_FILE}"))


def read_ground_truth(folder_uri: str, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """depth [S,H,W], valid [S,H,W], extrinsics [S,3,4] and intrinsics [S,3,3] as numpy arrays."""
    fs, root = _fs(folder_uri, storage_options)
    with np.load(io.BytesIO(fs.cat_file(f"{root}/{GROUND_TRUTH_FILE}"))) as data:
        return {key: data[key] for key in data.files}


def read_sequence(
    folder_uri: str, storage_options: dict | None = None, device: torch.device | str = "cpu"
) -> SyntheticSequence:
    """A written sequence back as tensors; world points are recomputed from depth."""
    fs, root = _fs(folder_uri, storage_options)
    meta = read_meta(folder_uri, storage_options)
    gt = {k: torch.from_numpy(v).to(device) for k, v in read_ground_truth(folder_uri, storage_options).items()}
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(fs.cat_file(f"{root}/{name}"))).convert("RGB")) for name in meta["frames"]]
    )
    points = unproject_depth(gt["depth"], gt["extrinsics"], gt["intrinsics"])
    return SyntheticSequence(
        images=torch.from_numpy(images).to(device),
        depth=gt["depth"],
        valid=gt["valid"],
        extrinsics=gt["extrinsics"],
        intrinsics=gt["intrinsics"],
        world_points=torch.where(gt["valid"][..., None], points, torch.zeros_like(points)),
        scene=meta["scene"],
        trajectory=meta["trajectory"],
        seed=int(meta["seed"]),
    )


def list_sequences(dataset_uri: str, storage_options: dict | None = None) -> list[str]:
    """Names of the sequence folders of a dataset, sorted."""
    fs, root = _fs(dataset_uri, storage_options)
    entries = fs.ls(root, detail=True)
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]
    return sorted(n for n in names if n.startswith("seq_"))


def generate_dataset(
    out_uri: str,
    num_sequences: int,
    seed: int | None,
    num_frames: int,
    height: int,
    width: int,
    *,
    seeds: Sequence[int] | None = None,
    scene: str | None = None,
    trajectory: str | None = None,
    storage_options: dict | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> list[str]:
    """Writes `num_sequences` sequences under `out_uri`; returns their folder URIs.

    Without an explicit kind, sequence i cycles through every scene x trajectory pair, so even a
    small dataset covers all of them; each sequence gets its own seed derived from `seed`, or
    exactly `seeds[i]` when `seeds` is given (e.g. held-out seeds, which derived ones may not be:
    they spread over [0, 2**31)).
    """
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if len(seeds) != num_sequences:
            raise ValueError(f"got {len(seeds)} seeds for {num_sequences} sequences")
    elif seed is None:
        raise ValueError("give a base seed or the seeds of every sequence")
    fs, root = _fs(out_uri, storage_options)
    fs.makedirs(root, exist_ok=True)
    base = out_uri.rstrip("/")
    folders, entries = [], []
    for i in tqdm(range(num_sequences), desc="synthetic sequences", unit="seq", disable=not progress):
        seq = generate_sequence(
            seeds[i] if seeds is not None else derive_seed(seed, i),
            num_frames=num_frames,
            height=height,
            width=width,
            scene=scene or SCENES[i % len(SCENES)],
            trajectory=trajectory or TRAJECTORIES[(i // len(SCENES)) % len(TRAJECTORIES)],
            device=device,
        )
        folder = f"{base}/{sequence_name(i)}"
        write_sequence(seq, folder, storage_options)
        folders.append(folder)
        entries.append({"name": sequence_name(i), "seed": seq.seed, "scene": seq.scene, "trajectory": seq.trajectory})
    index = {
        "format": FORMAT,
        "seed": seed if seeds is None else None,
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "sequences": entries,
    }
    fs.pipe_file(f"{root}/{INDEX_FILE}", json.dumps(index, indent=2).encode())
    return folders
