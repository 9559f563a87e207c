"""Synthetic sequences with exact ground truth, committed into a run folder without Ray or a model.

The ground-truth cameras and depth maps stand in for a reconstruction: they go through the same
writer the model actor uses (`SequenceWriter`, `prepare_frame`) and the same commit, so exports
and previews are made exactly as in a run, and what they should contain is known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.commit import commit_sequence
from pipeline.layout import RunLayout
from pipeline.outputs import SequenceWriter, prepare_frame
from pipeline.spec import JobSpec
from pipeline.storage import Store
from zipmap_core.engines.results import FramePrediction
from zipmap_core.synthetic import generate_sequence

from ..conftest import make_spec

WIDTH, HEIGHT = 112, 84  # a multiple of 14 wide and high: preprocessing at size 112 keeps the images as they are
SCENES = {"room_orbit": (11, "room", "orbit"), "objects_walk": (12, "objects", "walkthrough")}


def ground_truth_frames(name: str, num_frames: int = 5) -> list[FramePrediction]:
    """One synthetic sequence as the engine would hand it out, with exact cameras and depth."""
    seed, scene, trajectory = SCENES[name]
    seq = generate_sequence(seed, num_frames=num_frames, height=HEIGHT, width=WIDTH, scene=scene, trajectory=trajectory)
    a = seq.arrays()
    return [
        FramePrediction(
            index=i,
            extrinsic=a["extrinsics"][i].astype(np.float32),
            intrinsic=a["intrinsics"][i].astype(np.float32),
            depth=a["depth"][i].astype(np.float32),  # 0 (invalid) where nothing was hit
            depth_conf=np.full((HEIGHT, WIDTH), 2.0, np.float32),
            image=a["images"][i],
            camera_conf=2.0,
        )
        for i in range(num_frames)
    ]


def write_sources(folder: Path, frames: list[FramePrediction], scale: int = 1) -> list[str]:
    """The frames' images as PNG files (the "captures" the run read), `scale` times larger."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in frames:
        path = folder / f"frame_{f.index:03d}.png"
        Image.fromarray(f.image).resize((WIDTH * scale, HEIGHT * scale), Image.Resampling.BICUBIC).save(path)
        paths.append(str(path))
    return paths


def commit_run(
    spec: JobSpec,
    sequences: dict[str, tuple[list[FramePrediction], list[str]]],
    source_size: tuple[int, int] | None = None,
) -> str:
    """Write and commit every sequence as a model actor and the coordinator would; returns the run
    URI. The sources' sizes are read from the files unless given."""
    store, layout = Store(spec.run_uri, spec.storage), RunLayout(spec.run_uri)
    store.write_bytes(layout.spec, spec.to_json().encode())
    for sid, (frames, uris) in sequences.items():
        sizes = [source_size or Image.open(u).size for u in uris]
        writer = SequenceWriter(spec, sid, uris, sizes)
        try:
            for frame in frames:
                writer.add_prepared(prepare_frame(writer.frame_format, frame))
            staged = writer.finish(store, layout, "attempt1")
        finally:
            writer.close()
        commit_sequence(store, layout, sid, "attempt1", staged, {"source_uri": uris[0].split("#")[0]})
    return spec.run_uri


def ground_truth_run(root: Path, num_frames: int = 5, **fields) -> tuple[str, dict[str, list[FramePrediction]]]:
    """Every scene of SCENES committed into `<root>/out/gt`, with spec `fields` as in make_spec;
    returns (run URI, frames by sequence id)."""
    frames = {name: ground_truth_frames(name, num_frames) for name in SCENES}
    sequences = {name: (f, write_sources(root / "in" / name, f)) for name, f in frames.items()}
    spec = make_spec(root / "in", root / "out", None, run_id="gt", model__allow_random_weights="true", **fields)
    return commit_run(spec, sequences), frames
