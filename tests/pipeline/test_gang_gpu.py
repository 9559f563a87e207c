"""Long sequences on a gang of 2 GPUs inside a pipeline run (NCCL), on the GPU machine only
(`pytest -m gpu`; deselected without CUDA, see tests/conftest.py): `engine.frame_parallel: auto`
finds the 2 GPUs, the long sequence runs on both (one GPU per member), the short one on the pool,
and the long one's outputs (and scene state) equal a single actor's."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from pipeline import read_outputs, run_job
from tests.zipmap_core.reference_data import filled_state_dict
from zipmap_core import ModelConfig, ZipMap
from zipmap_core.scene_state import SceneState

from .conftest import make_spec, write_sequence
from .test_gang_phase import _events, _marker, _outputs

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]

GPU_JOB = dict(
    engine__mode="chunked", engine__chunk_size=4, engine__dtype="float32", engine__newton_schulz="float32",
    resources__gang_min_frames=12, resources__device="cuda", resources__cpus_per_actor=0.5, save_depth="true",
)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_auto_gang_spreads_a_long_sequence_over_two_gpus(ray_cluster, tiny_checkpoint, tmp_path, caplog):
    import ray

    assert ray.cluster_resources().get("GPU", 0) >= 2, f"the test Ray cluster sees {ray.cluster_resources()}"
    caplog.set_level(logging.INFO)
    data = tmp_path / "data"
    write_sequence(data / "short", 4, seed=1)
    write_sequence(data / "long", 13, seed=2)
    spec = make_spec(data, tmp_path / "out", tiny_checkpoint, run_id="gang", **GPU_JOB)
    assert run_job(spec).done == 2
    ready = _events(caplog, "gang_ready")
    assert len(ready) == 1 and ready[0]["size"] == 2, ready
    gpus = [m.split(":gpu", 1)[1] for m in ready[0]["members"].split(",")]
    assert len(set(gpus)) == 2, f"one GPU per member: {ready[0]['members']}"
    marker = _marker(spec.run_uri, "long")
    assert marker["engine"]["frame_parallel"] == 2 and "frame_parallel" not in _marker(spec.run_uri, "short")["engine"]

    single = make_spec(data, tmp_path / "single", tiny_checkpoint, run_id="single",
                       **{**GPU_JOB, "engine__frame_parallel": 1})
    assert run_job(single).done == 2
    gang, one = _outputs(spec.run_uri, "long"), _outputs(single.run_uri, "long")
    errors = {k: float(np.abs(gang[k] - one[k]).max() / np.abs(one[k]).max()) for k in ("extrinsic", "intrinsic")}
    errors["depth"] = float(np.abs(gang["depth"] - one["depth"]).max() / np.abs(one["depth"]).max())
    print(json.dumps({"gang_vs_one_actor_max_rel_error": errors, "gang_members": ready[0]["members"]}))
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_a_gang_of_two_gpus_keeps_the_scene_state_of_a_single_actor(ray_cluster, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    model = ZipMap(ModelConfig.preset("tiny_state_query"))
    checkpoint = tmp_path / "tiny_state_query.pt"
    torch.save(filled_state_dict(model), checkpoint)
    write_sequence(tmp_path / "data" / "long", 13, seed=2)
    job = dict(GPU_JOB, model__preset="tiny_state_query", scene_state__enabled="true")
    states = {}
    for name, parallel in (("gang", "auto"), ("single", 1)):
        spec = make_spec(tmp_path / "data", tmp_path / name, checkpoint, run_id=name, engine__frame_parallel=parallel,
                         **job)
        assert run_job(spec).done == 1
        assert _marker(spec.run_uri, "long")["worker"].get("gang") == (2 if name == "gang" else None)
        states[name] = SceneState.load(read_outputs(spec.run_uri).scene_state_uri("long"))
    gang, one = states["gang"], states["single"]
    errors = {"extrinsics": rel(gang.extrinsics, one.extrinsics), "intrinsics": rel(gang.intrinsics, one.intrinsics)}
    pairs = zip(gang.layers, one.layers, strict=True)
    errors["fast_weights"] = max(rel(getattr(a, w), getattr(b, w)) for a, b in pairs for w in ("w0", "w1", "w2"))
    print(json.dumps({"gang_state_vs_one_actor_max_rel_error": errors}))
    assert gang.num_frames == 13 and max(errors.values()) <= 1e-4, errors


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())
