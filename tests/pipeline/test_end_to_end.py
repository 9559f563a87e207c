"""End to end on the shared local Ray cluster: images in, Parquet + PLY out, equal to the engine."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import read_outputs, resume_job, run_job, run_status
from pipeline.cli import main
from pipeline.errors import InfrastructureError, RunFailedError, SpecError
from pipeline.tables import read_metadata

from .conftest import (
    assert_voxel_means,
    expected_points,
    make_spec,
    parse_ply,
    point_masks,
    reference_frames,
    write_sequence,
)

pytestmark = pytest.mark.timeout(240)

GOOD = {"alpha": 3, "beta": 4, "gamma 7": 2}


@pytest.fixture(scope="module")
def local_run(ray_cluster, tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    inputs = root / "in"
    paths = {name: write_sequence(inputs / name, n, seed=i) for i, (name, n) in enumerate(GOOD.items())}
    write_sequence(inputs / "single", 1, seed=9)  # too few frames
    write_sequence(inputs / "mixed", 2, seed=9)
    write_sequence(inputs / "mixed", 1, seed=9, size=(140, 84), ext=".jpg")  # two image sizes
    (inputs / "broken").mkdir()
    (inputs / "broken" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (inputs / "broken" / "b.png").write_bytes(b"")
    refs = {name: reference_frames(tiny_checkpoint, p) for name, p in paths.items()}
    threshold = float(np.median(np.concatenate([f.depth_conf.ravel() for fr in refs.values() for f in fr])))
    spec = make_spec(
        inputs, root / "out", tiny_checkpoint, run_id="e2e", point_cloud__conf_threshold=threshold, save_depth="true"
    )
    summary = run_job(spec, raise_on_failure=False)
    return {"spec": spec, "summary": summary, "refs": refs, "paths": paths, "threshold": threshold}


def _ids(name: str) -> str:
    return name.replace(" ", "_")


def test_summary_manifest_and_bad_inputs(local_run):
    summary, spec = local_run["summary"], local_run["spec"]
    assert (summary.status, summary.done, summary.failed, summary.pending) == ("partial", 3, 3, 0)
    assert summary.exit_code == 1 and summary.frames == sum(GOOD.values())
    errors = {f["sequence_id"]: f for f in summary.failures}
    assert set(errors) == {"single", "mixed", "broken"}
    assert "fewer than min_frames=2" in errors["single"]["error"]
    assert "one image size" in errors["mixed"]["error"]
    assert "a.png" in errors["broken"]["error"]
    assert all(f["attempts"] == 1 and f["error_kind"] == "input" for f in errors.values())  # never retried
    stored = json.loads(open(os.path.join(spec.run_uri, "summary.json")).read())
    assert stored == summary.model_dump(mode="json")
    manifest = read_outputs(spec.run_uri).manifest.to_pylist()
    rows = {r["sequence_id"]: r for r in manifest}
    assert {r["status"] for r in manifest} == {"done", "failed"} and len(rows) == 6
    done = rows["alpha"]
    assert done["num_frames"] == 3 and done["attempts"] == 1 and done["frames_path"].endswith("part-0.parquet")
    assert all(done[k] is not None and done[k] >= 0 for k in ("decode_s", "infer_s", "write_s", "total_s"))
    stored_spec = json.loads(open(os.path.join(spec.run_uri, "spec.json")).read())
    assert stored_spec["run_id"] == "e2e" and stored_spec["model"]["preset"] == "tiny"


def test_frames_table_equals_direct_engine(local_run):
    run_uri, refs, paths = local_run["spec"].run_uri, local_run["refs"], local_run["paths"]
    table = ds.dataset(os.path.join(run_uri, "frames"), partitioning="hive").to_table()
    assert table.num_rows == sum(GOOD.values())
    rows = sorted(table.to_pylist(), key=lambda r: (r["sequence_id"], r["frame_index"]))
    by_seq = {}
    for r in rows:
        by_seq.setdefault(r["sequence_id"], []).append(r)
    for name, frames in refs.items():
        got = by_seq[_ids(name)]
        assert [r["frame_index"] for r in got] == list(range(len(frames)))
        for r, f, src in zip(got, frames, paths[name]):
            assert r["source_uri"] == str(src)
            assert (r["width"], r["height"], r["source_width"], r["source_height"]) == (112, 84, 112, 84)
            np.testing.assert_allclose(np.array(r["extrinsic"]).reshape(3, 4), f.extrinsic, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.array(r["intrinsic"]).reshape(3, 3), f.intrinsic, rtol=1e-5, atol=1e-6)
            valid = f.depth[np.isfinite(f.depth) & (f.depth > 0)]
            np.testing.assert_allclose(
                [r["depth_min"], r["depth_max"], r["depth_mean"], r["depth_median"]],
                [valid.min(), valid.max(), valid.mean(), np.median(valid)],
                rtol=1e-5,
            )
            np.testing.assert_allclose(r["camera_conf"], f.camera_conf, rtol=1e-5)


def test_point_clouds_equal_direct_engine(local_run):
    """The absolute threshold and, by default, the released demo's 50th confidence percentile of
    the whole sequence; the frames table counts each frame's kept points."""
    run_uri, refs, threshold = local_run["spec"].run_uri, local_run["refs"], local_run["threshold"]
    outputs = read_outputs(run_uri)
    for name, frames in refs.items():
        with open(os.path.join(run_uri, "points", f"{_ids(name)}.ply"), "rb") as f:
            ply = parse_ply(f.read())
        want = expected_points(frames, threshold, percentile=50)
        assert 0 < len(ply["x"]) < len(expected_points(frames, threshold)["x"])  # the percentile removed some
        for key, values in want.items():
            np.testing.assert_allclose(ply[key], values, rtol=1e-5, atol=1e-6, err_msg=key)
        rows = [r for r in outputs.frames.to_pylist() if r["sequence_id"] == _ids(name)]
        assert [r["num_points"] for r in rows] == [int(m.sum()) for m in point_masks(frames, threshold, 50)]


@pytest.mark.parametrize("percentile", [50, None])
def test_voxel_point_clouds_average_the_direct_engine_points(local_run, tmp_path, percentile):
    """With voxel_size, the PLY holds the mean of every occupied voxel of the kept points: summed
    per frame in a frame-writer process and merged by the actor (no percentile), or averaged from
    the spool once the sequence's percentile is known (the default)."""
    base, refs, threshold = local_run["spec"], local_run["refs"], local_run["threshold"]
    want = expected_points(refs["alpha"], threshold, percentile=percentile)
    xyz = np.stack([want["x"], want["y"], want["z"]], axis=1).astype(np.float64)
    size = float((xyz.max(0) - xyz.min(0)).max() / 6)  # a few points in most voxels
    manifest = tmp_path / "one.csv"
    manifest.write_text(f"sequence_id,uri\nalpha,{os.path.join(base.input.prefix, 'alpha')}\n")
    spec = make_spec(
        base.input.prefix, tmp_path / "out", base.model.checkpoint, run_id="voxels", input__prefix="null",
        input__manifest=str(manifest), point_cloud__conf_threshold=threshold, point_cloud__voxel_size=size,
        resources__frame_writers=1, point_cloud__confidence_percentile="null" if percentile is None else percentile,
    )
    assert run_job(spec).done == 1
    with open(os.path.join(spec.run_uri, "points", "alpha.ply"), "rb") as f:
        ply = parse_ply(f.read())
    assert assert_voxel_means(ply, want, size, atol=1e-6) < len(xyz)  # PLY order: by voxel index


def test_depth_maps_equal_direct_engine(local_run):
    outputs = read_outputs(local_run["spec"].run_uri)
    depth = outputs.depth().to_pylist()
    assert len(depth) == sum(GOOD.values())
    first = next(r for r in depth if r["sequence_id"] == "alpha" and r["frame_index"] == 1)
    ref = local_run["refs"]["alpha"][1]
    np.testing.assert_allclose(np.array(first["depth"]).reshape(first["height"], first["width"]), ref.depth, rtol=1e-5)
    assert outputs.point_cloud("beta").dtype.names == ("x", "y", "z", "red", "green", "blue", "confidence")


def test_tables_open_in_pandas_and_pyarrow(local_run):
    """Each table folder and the manifest, with the readers users reach for first; the sequence id
    comes from the hive path, and every file says what produced it and in which conventions."""
    run_uri = local_run["spec"].run_uri
    frames = pd.read_parquet(os.path.join(run_uri, "frames"))
    assert sorted(frames["sequence_id"].astype(str).unique()) == ["alpha", "beta", "gamma_7"]
    assert len(frames) == sum(GOOD.values())
    table = pq.read_table(os.path.join(run_uri, "frames"))
    assert table.num_rows == len(frames) and "camera_conf" in table.column_names
    depth = pq.read_table(os.path.join(run_uri, "depth")).to_pandas()
    assert len(depth) == sum(GOOD.values())
    alpha = depth[(depth["sequence_id"] == "alpha") & (depth["frame_index"] == 1)].iloc[0]
    ref = local_run["refs"]["alpha"][1]
    restored = np.asarray(alpha["depth"], np.float32).reshape(alpha["height"], alpha["width"])
    np.testing.assert_allclose(restored, ref.depth, rtol=1e-5)
    assert len(pd.read_parquet(os.path.join(run_uri, "depth", "sequence_id=beta"))) == GOOD["beta"]
    assert len(pd.read_parquet(os.path.join(run_uri, "manifest.parquet"))) == 6

    part = pq.ParquetFile(os.path.join(run_uri, "depth", "sequence_id=alpha", "part-0.parquet"))
    meta = read_metadata(part.schema_arrow)
    assert meta["sequence_id"] == "alpha" and meta["table"] == "depth"
    assert meta["model"]["preset"] == "tiny" and meta["model"]["checkpoint"] == local_run["spec"].model.checkpoint
    assert meta["engine"] == {"mode": "offline", "dtype": "float32", "fast": False, "compile": False,
                              "newton_schulz": "bfloat16", "local_points": False}  # "auto" on a CPU
    assert "world-to-camera" in meta["conventions"]["extrinsic"] and "OpenCV" in meta["conventions"]["extrinsic"]
    assert part.schema_arrow.field("depth").metadata[b"unit"] == b"scene units"
    assert part.metadata.num_row_groups == 1  # 3 frames: one row group
    column = part.metadata.row_group(0).column(3)
    assert column.compression == "ZSTD" and "BYTE_STREAM_SPLIT" in column.encodings
    frames_meta = read_metadata(pq.read_schema(os.path.join(run_uri, "frames", "sequence_id=alpha", "part-0.parquet")))
    assert frames_meta["engine"]["mode"] == "offline" and frames_meta["point_cloud"]["confidence_percentile"] == 50
    manifest = pd.read_parquet(os.path.join(run_uri, "manifest.parquet")).set_index("sequence_id")
    assert json.loads(manifest.loc["alpha", "engine"]) == meta["engine"]
    # and as a Ray dataset, the sequence id a string taken from the path
    rows = read_outputs(run_uri).frames_dataset().to_pandas()
    assert sorted(set(rows["sequence_id"])) == ["alpha", "beta", "gamma_7"] and len(rows) == len(frames)


def test_frames_prepared_in_writer_processes_give_the_same_outputs(local_run, tmp_path):
    spec = local_run["spec"]
    other = run_job(spec, overrides=[f"output={tmp_path}", "resources.frame_writers=2"], raise_on_failure=False)
    assert (other.done, other.failed) == (3, 3)
    ours, theirs = read_outputs(spec.run_uri), read_outputs(other.run_uri)
    order = [("sequence_id", "ascending"), ("frame_index", "ascending")]
    assert ours.frames.sort_by(order).equals(theirs.frames.sort_by(order))
    assert ours.depth().sort_by(order).equals(theirs.depth().sort_by(order))
    for name in GOOD:
        np.testing.assert_array_equal(ours.point_cloud(_ids(name)), theirs.point_cloud(_ids(name)))


def test_rerun_skips_committed_and_failed(local_run, capsys):
    spec = local_run["spec"]
    commits = os.path.join(spec.run_uri, "_commits")
    before = {
        n: (os.stat(os.path.join(commits, n)).st_mtime_ns, open(os.path.join(commits, n)).read())
        for n in os.listdir(commits)
    }
    summary = run_job(spec, raise_on_failure=False)
    assert (summary.done, summary.failed) == (3, 3)
    after = {
        n: (os.stat(os.path.join(commits, n)).st_mtime_ns, open(os.path.join(commits, n)).read())
        for n in os.listdir(commits)
    }
    assert after == before
    assert {f["sequence_id"]: f["attempts"] for f in summary.failures} == {"single": 1, "mixed": 1, "broken": 1}
    assert run_status(spec.run_uri).done == 3
    assert main(["status", spec.run_uri]) == 1  # some sequences failed
    assert json.loads(capsys.readouterr().out)["failed"] == 3


def test_resume_of_a_finished_run_keeps_its_statistics(local_run):
    spec = local_run["spec"]
    path = os.path.join(spec.run_uri, "summary.json")
    before, status_before = open(path).read(), run_status(spec.run_uri)
    resumed = resume_job(spec.run_uri, raise_on_failure=False)
    assert open(path).read() == before
    stored = json.loads(before)
    assert (resumed.elapsed_s, resumed.frames_per_s) == (stored["elapsed_s"], stored["frames_per_s"]) != (0.0, 0.0)
    after = run_status(spec.run_uri)
    assert (after.elapsed_s, after.frames_per_s) == (status_before.elapsed_s, status_before.frames_per_s)
    assert after.frames_per_s == stored["frames_per_s"]


def test_run_job_raises_with_the_summary_when_sequences_failed(local_run):
    """A scheduler task calling run_job fails (not green) when sequences failed; the error carries the summary."""
    spec = local_run["spec"]
    with pytest.raises(RunFailedError, match=r"run e2e partial: 3 of 6 sequences done, 3 failed") as caught:
        run_job(spec)  # the finished run: nothing runs again, the summary is rebuilt from markers and manifest
    summary = caught.value.summary
    assert (summary.status, summary.done, summary.failed) == ("partial", 3, 3)
    assert {f["sequence_id"] for f in summary.failures} == {"single", "mixed", "broken"}
    assert caught.value.exit_code == 1
    again = pickle.loads(pickle.dumps(caught.value))  # schedulers and Ray pickle exceptions
    assert again.summary == summary and str(again) == str(caught.value)


def test_a_run_cannot_change_what_its_outputs_mean(local_run):
    spec = local_run["spec"]
    with pytest.raises(SpecError, match="point_cloud"):
        run_job(spec, overrides=["point_cloud.voxel_size=0.1"])
    with pytest.raises(SpecError, match="engine"):
        run_job(spec, overrides=["engine.newton_schulz=float32"])
    # resources, retries, where activations live and how many GPUs share a long sequence may change
    overrides = [
        "resources.max_in_flight_per_actor=1", "retry.max_attempts=5", "engine.host_memory_budget_gb=8",
        "engine.gpu_cache_gb=1", "engine.frame_parallel=2", "resources.gang_min_frames=1000",
    ]
    summary = run_job(spec, overrides=overrides, raise_on_failure=False)
    assert summary.done == 3


def test_missing_checkpoint_is_an_infrastructure_error(ray_cluster, tmp_path):
    write_sequence(tmp_path / "in" / "s", 2, seed=0)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tmp_path / "nope.pt")
    with pytest.raises(InfrastructureError, match="nope.pt"):
        run_job(spec)


def test_empty_input_is_a_spec_error(ray_cluster, tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "in" / "nothing-here").mkdir(parents=True)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    path = tmp_path / "job.json"
    path.write_text(spec.to_json())
    assert main(["run", str(path), "--no-progress"]) == 2
    assert "no sequences found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
