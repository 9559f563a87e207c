"""Shared fixtures of the pipeline tests: one Ray cluster, one tiny checkpoint, input builders.

The Ray cluster is a `ray.cluster_utils.Cluster` (head with 2 CPUs) shared by the whole session,
so node-loss tests can add and remove nodes and subprocess drivers can join it via RAY_ADDRESS.
Fake AWS credentials are put in the environment before Ray starts, so workers inherit them
(that is how real credentials reach workers too: from the environment, never from a spec).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.spec import JobSpec, load_spec
from pipeline.testing.s3server import FAKE_CREDENTIALS, LocalS3

IMAGE_W, IMAGE_H = 112, 84  # model input 112 wide (tiny preset), 84 = 6 patches high


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            # cluster_utils defaults to no GPUs; on the GPU machine the `gpu`-marked tests need them
            "num_gpus": _visible_gpus(),
            "include_dashboard": False,
            # notice lost nodes within seconds, not the default tens of seconds
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def s3():
    """A local S3 endpoint (moto's server over HTTP) with the buckets `capture` and `results`.
    moto keeps its buckets per process, not per server: give each test its own prefixes."""
    from pipeline.testing.s3server import LocalS3

    with LocalS3() as server:
        server.create_bucket("capture")
        server.create_bucket("results")
        yield server


@pytest.fixture(scope="session")
def local_s3():
    """One moto S3 server over HTTP for the session, with fake credentials in the environment."""
    saved = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    with LocalS3() as server:
        yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Seeded tiny-preset weights, saved the way a training script would."""
    from zipmap_core.config import ModelConfig
    from zipmap_core.models.zipmap import ZipMap

    torch.manual_seed(1234)
    model = ZipMap(ModelConfig.preset("tiny"))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def write_sequence(folder: Path, num_frames: int, *, seed: int, size=(IMAGE_W, IMAGE_H), ext=".png") -> list[Path]:
    """Smooth random images (a gradient plus noise), named frame1, frame2, ..., frame10."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(num_frames):
        base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 40 * i % 255)], axis=-1)
        img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"frame{i + 1}{ext}"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def make_spec(input_prefix: str, output: str, checkpoint: str | os.PathLike | None, **fields) -> JobSpec:
    """A tiny-model spec for tests; `fields` are dotted overrides (e.g. retry__backoff_s -> retry.backoff_s)."""
    data = {
        "input": {"prefix": str(input_prefix)},
        "output": str(output),
        "model": {"preset": "tiny", "checkpoint": str(checkpoint) if checkpoint else None},
        "preprocess": {"size": IMAGE_W},
        "retry": {"backoff_s": 0.2, "max_attempts": 3},
        "resources": {"actor_start_timeout_s": 120},
    }
    overrides = [f"{k.replace('__', '.')}={v}" for k, v in fields.items()]
    return load_spec(data, overrides)


def input_errors(spec: JobSpec) -> dict[str, str]:
    """Decode every sequence of the spec's input, each of which must fail as bad input: the messages by id."""
    from pipeline.decode import decode_sequence
    from pipeline.discovery import discover
    from pipeline.errors import InputError

    errors = {}
    for source in discover(spec):
        with pytest.raises(InputError) as exc:
            decode_sequence(source, spec)
        errors[source.sequence_id] = str(exc.value)
    return errors


def reference_frames(checkpoint: Path, sources: list, *, size: int = IMAGE_W, storage_options=None, engine=None):
    """The engine run directly (no pipeline) on the same images: what the outputs must equal."""
    from zipmap_core.checkpoint import load_checkpoint
    from zipmap_core.config import ModelConfig
    from zipmap_core.engines import reconstruct
    from zipmap_core.images import load_images
    from zipmap_core.models.zipmap import ZipMap

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU Ray actor (Ray sets OMP_NUM_THREADS=1)
    try:
        model = load_checkpoint(ZipMap(ModelConfig.preset("tiny")), str(checkpoint))
        images = load_images([str(s) for s in sources], size=size, storage_options=storage_options)
        with torch.inference_mode():
            return list(reconstruct(model, images, engine))
    finally:
        torch.set_num_threads(threads)


def parse_ply(data: bytes) -> dict[str, np.ndarray]:
    """An independent reader for the pipeline's PLY files: header, then numpy frombuffer."""
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").split("\n")
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0", header[:2]
    count, props = None, []
    for line in header:
        words = line.split()
        if words[:2] == ["element", "vertex"]:
            count = int(words[2])
        elif words and words[0] == "property":
            props.append((words[2], {"float": "<f4", "uchar": "u1"}[words[1]]))
    dtype = np.dtype(props)
    assert len(data) - end == count * dtype.itemsize, "body size does not match the header"
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    return {name: arr[name] for name in dtype.names}


def point_masks(frames, threshold: float, percentile: float | None = None) -> list[np.ndarray]:
    """The documented point filter, written out independently of pipeline.pointcloud: valid depth,
    finite points, confidence > 1e-5 and >= threshold, then (the released demo's rule) >= the
    `percentile` of the confidences of all those candidates of the sequence, as numpy computes it."""
    masks = [
        np.isfinite(f.world_points).all(-1)
        & np.isfinite(f.depth)
        & (f.depth > 0)
        & np.isfinite(f.depth_conf)
        & (f.depth_conf > 1e-5)
        & (f.depth_conf >= threshold)
        for f in frames
    ]
    if percentile:
        cut = np.percentile(np.concatenate([f.depth_conf[m] for f, m in zip(frames, masks)]), percentile)
        masks = [m & (f.depth_conf >= cut) for f, m in zip(frames, masks)]
    return masks


def expected_points(frames, threshold: float, percentile: float | None = None) -> dict[str, np.ndarray]:
    """The PLY columns of `frames` under the documented filter (`point_masks`), in frame order."""
    cols = {k: [] for k in ("x", "y", "z", "red", "green", "blue", "confidence")}
    for f, keep in zip(frames, point_masks(frames, threshold, percentile)):
        for i, k in enumerate(("x", "y", "z")):
            cols[k].append(f.world_points[..., i][keep])
        for i, k in enumerate(("red", "green", "blue")):
            cols[k].append(f.image[..., i][keep])
        cols["confidence"].append(f.depth_conf[keep])
    return {k: np.concatenate(v) for k, v in cols.items()}


def assert_voxel_means(out, points, size: float, atol: float = 0.0) -> int:
    """`out` (PLY columns) holds, in voxel order, the mean of the `points` (columns) in every
    voxel floor(xyz / size): the documented averaging, written out independently of
    pipeline.pointcloud. Returns the number of voxels."""
    xyz = np.stack([np.asarray(points[k], np.float64) for k in ("x", "y", "z")], axis=1)
    groups: dict = {}
    for i, key in enumerate(map(tuple, np.floor(xyz / size).astype(np.int64))):
        groups.setdefault(key, []).append(i)
    members = [groups[k] for k in sorted(groups)]
    assert len(out["x"]) == len(members)
    for key in ("x", "y", "z", "red", "green", "blue", "confidence"):
        mean = [np.mean(np.asarray(points[key][m], np.float64)) for m in members]
        if key in ("red", "green", "blue"):  # rounded to the nearest colour value
            np.testing.assert_array_equal(out[key], np.rint(mean), err_msg=key)
        else:
            np.testing.assert_allclose(out[key], mean, rtol=1e-5, atol=atol, err_msg=key)
    return len(members)
