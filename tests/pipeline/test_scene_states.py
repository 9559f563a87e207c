"""Scene states end to end on the shared Ray cluster: a run keeps every sequence's state next to
its outputs (committed with them), the CLI renders PNGs and MP4s from it, the render job renders
several scenes on Ray actors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import read_outputs, render_views, run_job
from pipeline.cli import main
from pipeline.errors import SpecError
from pipeline.render_job import RenderJobSpec, run_render_job
from tests.zipmap_core.reference_data import filled_state_dict
from zipmap_core.checkpoint import load_checkpoint
from zipmap_core.config import ModelConfig
from zipmap_core.engines import EngineConfig, reconstruct
from zipmap_core.images import load_images
from zipmap_core.models.zipmap import ZipMap
from zipmap_core.scene_state import SceneState

from .conftest import make_spec, write_sequence

pytestmark = pytest.mark.timeout(300)

SEQUENCES = {"alpha": 3, "beta": 4, "gamma": 2}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Weights by the reference's fill rule: unlike the default initialisation (layer scales of
    0.01), they make the rendered views depend on the state."""
    model = ZipMap(ModelConfig.preset("tiny_state_query"))
    path = tmp_path_factory.mktemp("ckpt") / "tiny_state_query.pt"
    torch.save(filled_state_dict(model), path)
    return path


@pytest.fixture(scope="module")
def state_run(ray_cluster, checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    paths = {name: write_sequence(root / "in" / name, n, seed=20 + i) for i, (name, n) in enumerate(SEQUENCES.items())}
    spec = make_spec(
        root / "in",
        root / "out",
        checkpoint,
        run_id="states",
        model__preset="tiny_state_query",
        scene_state__enabled="true",
    )
    summary = run_job(spec)
    assert (summary.done, summary.failed) == (3, 0), summary
    return {"spec": spec, "paths": paths, "root": root}


def assert_states_close(state: SceneState, ref: SceneState, rel: float = 1e-4) -> None:
    """Same model and images; cameras and every layer's fast weights within `rel` of `ref`'s range
    (a gang's state: one process's up to summation order)."""
    assert state.model == ref.model and state.image_hw == ref.image_hw and state.num_frames == ref.num_frames
    pairs = [(state.extrinsics, ref.extrinsics), (state.intrinsics, ref.intrinsics)]
    for ours, theirs in zip(state.layers, ref.layers, strict=True):
        pairs += [(getattr(ours, w), getattr(theirs, w)) for w in ("w0", "w1", "w2")]
    for ours, theirs in pairs:
        assert (ours - theirs).abs().max() <= rel * theirs.abs().max()


def direct_state(checkpoint: Path, sources: list, engine: EngineConfig | None = None) -> SceneState:
    """The engine run directly on the same images: the state the run must have stored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU Ray actor
    try:
        model = load_checkpoint(ZipMap(ModelConfig.preset("tiny_state_query")), str(checkpoint)).eval()
        captured = []
        list(reconstruct(model, load_images([str(s) for s in sources], size=112), engine, on_state=captured.append))
        return captured[0]
    finally:
        torch.set_num_threads(threads)


def test_states_are_committed_with_the_outputs(state_run, checkpoint):
    run_uri = state_run["spec"].run_uri
    outputs = read_outputs(run_uri)
    for name, n in SEQUENCES.items():
        uri = outputs.scene_state_uri(name)
        assert uri == os.path.join(run_uri, "states", f"{name}.safetensors")
        assert outputs.committed[name].state_path == uri
        state = SceneState.load(uri)
        assert state.num_frames == n and state.image_hw == (84, 112) and state.metadata["sequence_id"] == name
        assert json.loads(state.metadata["model"])["preset"] == "tiny_state_query"
        direct = direct_state(checkpoint, state_run["paths"][name])
        assert state.model == direct.model
        for ours, ref in zip(state.layers, direct.layers):
            for w in ("w0", "w1", "w2"):
                torch.testing.assert_close(getattr(ours, w), getattr(ref, w), rtol=1e-5, atol=1e-6)
    rows = {r["sequence_id"]: r for r in outputs.manifest.to_pylist()}
    assert rows["beta"]["state_path"].endswith("states/beta.safetensors")
    assert not os.path.exists(os.path.join(run_uri, "_staging"))


def test_chunked_bf16_states(state_run, checkpoint, tmp_path):
    spec = make_spec(
        state_run["root"] / "in",
        tmp_path,
        checkpoint,
        run_id="chunked",
        model__preset="tiny_state_query",
        scene_state__enabled="true",
        scene_state__dtype="bfloat16",
        engine__mode="chunked",
        engine__chunk_size=2,
    )
    assert run_job(spec).done == 3
    state = SceneState.load(read_outputs(spec.run_uri).scene_state_uri("beta"))
    direct = direct_state(checkpoint, state_run["paths"]["beta"])
    assert state.dtype == torch.bfloat16
    for ours, ref in zip(state.layers, direct.layers):
        torch.testing.assert_close(ours.w0.float(), ref.w0, rtol=1e-2, atol=1e-2)
    assert os.path.getsize(os.path.join(spec.run_uri, "states", "beta.safetensors")) < state.nbytes("float32")


def test_uncommitted_states_are_removed_when_a_run_continues(state_run):
    spec = state_run["spec"]
    ghost = os.path.join(spec.run_uri, "states", "ghost.safetensors")
    Path(ghost).write_bytes(b"left by a commit that never finished")
    assert run_job(spec).done == 3
    assert not os.path.exists(ghost) and os.path.exists(os.path.join(spec.run_uri, "states", "alpha.safetensors"))


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def read_mp4(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_cli_renders_pngs_and_mp4s_equal_to_the_python_api(state_run, tmp_path, capsys):
    run_uri = state_run["spec"].run_uri
    out = tmp_path / "orbit"
    assert main(["render", run_uri, "beta", "--orbit", "6", "--out", str(out), "--batch-size", "4"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["views"] == 6 and (record["height"], record["width"]) == (84, 112)
    assert json.loads((out / "render.json").read_text()) == record
    rgb = [read_png(out / "rgb" / f"{k:05d}.png") for k in range(6)]
    depth = [read_png(out / "depth" / f"{k:05d}.png") for k in range(6)]
    assert rgb[0].shape == (84, 112, 3) and depth[0].shape == (84, 112) and len(os.listdir(out / "rgb")) == 6
    assert len({d.tobytes() for d in depth}) > 1  # the views differ
    video = read_mp4(out / "rgb.mp4")
    assert len(video) == 6 and video[0].shape == (84, 112, 3)
    assert np.abs(video[3].astype(int) - rgb[3]).mean() < 12  # lossy, but the same picture
    assert len(read_mp4(out / "depth.mp4")) == 6

    # the same cameras through the Python API, from the state's URI alone (the model comes from its record)
    views = render_views(read_outputs(run_uri).scene_state_uri("beta"), str(out / "cameras.json"))
    assert views.rgb.shape == (6, 84, 112, 3)
    np.testing.assert_array_equal((np.clip(views.rgb, 0, 1) * 255).round().astype(np.uint8), np.stack(rgb))


def test_cli_interpolates_and_reads_camera_files(state_run, tmp_path, capsys):
    run_uri = state_run["spec"].run_uri
    assert main(["render", run_uri, "alpha", "--interpolate", "2", "--out", str(tmp_path / "path")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["views"] == 5  # 3 input cameras, 2 views from each to the next, then the last
    frames = read_outputs(run_uri).frames.to_pylist()
    first = next(r for r in frames if r["sequence_id"] == "alpha" and r["frame_index"] == 0)
    cams = {
        "height": 42,
        "width": 56,
        "cameras": [
            {
                "extrinsic": first["extrinsic"],
                "intrinsic": [first["intrinsic"][0] / 2, 0, 28, 0, first["intrinsic"][4] / 2, 21, 0, 0, 1],
            }
        ],
    }
    (tmp_path / "cams.json").write_text(json.dumps(cams))
    assert (
        main(["render", run_uri, "alpha", "--cameras", str(tmp_path / "cams.json"), "--out", str(tmp_path / "file")])
        == 0
    )
    assert read_png(tmp_path / "file" / "rgb" / "00000.png").shape == (42, 56, 3)


def test_cli_render_errors_are_usage_errors(state_run, tmp_path, capsys, checkpoint):
    run_uri = state_run["spec"].run_uri
    assert main(["render", run_uri, "nope", "--orbit", "2"]) == 2
    assert "not committed" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # argparse: one way of choosing cameras
        main(["render", run_uri, "alpha", "--orbit", "2", "--interpolate"])
    assert exited.value.code == 2 and "not allowed with" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"cameras": []}')
    assert main(["render", run_uri, "alpha", "--cameras", str(tmp_path / "bad.json")]) == 2
    assert "expected" in capsys.readouterr().err
    spec = make_spec(
        state_run["root"] / "in",
        tmp_path,
        checkpoint,
        run_id="nostate",
        model__preset="tiny_state_query",
        input__max_frames=2,
    )
    assert run_job(spec).done == 3
    assert main(["render", spec.run_uri, "alpha", "--orbit", "2"]) == 2
    assert "without scene_state.enabled" in capsys.readouterr().err


def test_scene_state_needs_a_state_query_model_and_a_bidirectional_engine(tmp_path, checkpoint):
    with pytest.raises(SpecError, match="no novel-view head"):
        make_spec(tmp_path, tmp_path, checkpoint, scene_state__enabled="true")
    with pytest.raises(SpecError, match="offline' or 'chunked"):
        make_spec(
            tmp_path,
            tmp_path,
            checkpoint,
            model__preset="tiny_state_query",
            scene_state__enabled="true",
            engine__mode="streaming",
            engine__window=2,
        )


def test_render_job_renders_several_scenes_on_actors(state_run, tmp_path):
    run_uri = state_run["spec"].run_uri
    job = RenderJobSpec(
        run=run_uri,
        cameras={"orbit": 3},
        output=str(tmp_path / "renders"),
        num_actors=2,
        cpus_per_actor=0.5,
        batch_size=2,
    )
    summary = run_render_job(job)
    assert (summary["status"], summary["rendered"], summary["failed"]) == ("succeeded", sorted(SEQUENCES), [])
    assert summary["views"] == 9
    for name in SEQUENCES:
        assert len(read_mp4(tmp_path / "renders" / name / "rgb.mp4")) == 3
        record = json.loads((tmp_path / "renders" / name / "render.json").read_text())
        assert record["state_uri"].endswith(f"states/{name}.safetensors") and record["views"] == 3
    stored = json.loads((tmp_path / "renders" / "render_summary.json").read_text())
    assert stored == summary
    # the same pictures as one sequence rendered alone; an actor's CPU thread count may order the float
    # sums differently from the driver's, which moves a rounding boundary by one level at most
    alone = render_views(
        read_outputs(run_uri).scene_state_uri("gamma"), str(tmp_path / "renders/gamma/cameras.json"), batch_size=2
    )
    png = np.asarray(Image.open(io.BytesIO((tmp_path / "renders/gamma/rgb/00002.png").read_bytes())))
    levels = (np.clip(alone.rgb[2], 0, 1) * 255).round().astype(np.int16) - png.astype(np.int16)
    assert np.abs(levels).max() <= 1 and np.count_nonzero(levels) <= levels.size // 1000
    again = run_render_job(job)  # rendered scenes are skipped
    assert (again["rendered"], again["skipped"]) == ([], sorted(SEQUENCES))


def test_states_travel_through_s3(state_run, tmp_path):
    from pipeline.spec import StorageSpec
    from pipeline.testing.s3server import LocalS3

    state = SceneState.load(read_outputs(state_run["spec"].run_uri).scene_state_uri("alpha"))
    cameras = str(tmp_path / "cams.json")
    Path(cameras).write_text(
        json.dumps(
            {"cameras": [{"extrinsic": state.extrinsics[1].tolist(), "intrinsic": state.intrinsics[1].tolist()}]}
        )
    )
    with LocalS3() as s3:
        s3.create_bucket("scenes")
        storage = StorageSpec(endpoint_url=s3.endpoint_url)
        uri = "s3://scenes/run/alpha.safetensors"
        size = state.save(uri, dtype="bfloat16", storage_options=storage.for_uri(uri))
        assert 0 < size < state.nbytes()
        from_s3 = render_views(uri, cameras, storage=storage)
    local = render_views(read_outputs(state_run["spec"].run_uri).scene_state_uri("alpha"), cameras)
    assert from_s3.rgb.shape == (1, 84, 112, 3)
    np.testing.assert_allclose(from_s3.rgb, local.rgb, atol=0.02)  # bf16 fast weights
