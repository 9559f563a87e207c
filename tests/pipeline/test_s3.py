"""The same pipeline against an S3 endpoint over HTTP (moto's server): inputs, checkpoint and outputs on S3."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline import read_outputs, run_job
from pipeline.spec import StorageSpec

from .conftest import expected_points, make_spec, parse_ply, reference_frames, write_sequence

pytestmark = pytest.mark.timeout(240)


def test_s3_in_s3_out(ray_cluster, tiny_checkpoint, tmp_path, s3):
    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url)
    local = {name: write_sequence(tmp_path / "in" / name, n, seed=10 + n) for name, n in (("day 1", 2), ("night", 3))}
    (tmp_path / "in" / "bad").mkdir()
    (tmp_path / "in" / "bad" / "x.jpg").write_bytes(b"nope")
    (tmp_path / "in" / "bad" / "y.jpg").write_bytes(b"nope")
    fs.put(str(tmp_path / "in") + "/", "capture/takes/", recursive=True)
    fs.put(str(tiny_checkpoint), "capture/models/tiny.pt")

    spec = make_spec(
        "s3://capture/takes",
        "s3://results/recon",
        "s3://capture/models/tiny.pt",
        run_id="s3run",
        storage__endpoint_url=s3.endpoint_url,
        storage__region="us-east-1",
        point_cloud__conf_threshold=0.0,
        save_depth="true",
    )
    summary = run_job(spec, raise_on_failure=False)
    assert (summary.done, summary.failed) == (2, 1), summary
    assert "x.jpg" in summary.failures[0]["error"]
    fs.invalidate_cache()
    assert fs.exists("results/recon/s3run/_commits/night.json")
    assert not fs.exists("results/recon/s3run/_staging")

    # the whole run as one dataset, straight from S3 with pyarrow
    table = ds.dataset("results/recon/s3run/frames", filesystem=fs, partitioning="hive").to_table()
    assert sorted(set(table.column("sequence_id").to_pylist())) == ["day_1", "night"]
    outputs = read_outputs("s3://results/recon/s3run", StorageSpec(endpoint_url=s3.endpoint_url))
    assert outputs.frames.num_rows == 5 and len(outputs.manifest) == 3
    assert outputs.depth().num_rows == 5

    # the table folders with pandas (through fsspec) and pyarrow (through s3fs), as users read them
    options = {"endpoint_url": s3.endpoint_url}
    for table in ("frames", "depth"):
        df = pd.read_parquet(f"s3://results/recon/s3run/{table}", storage_options=options)
        assert sorted(df["sequence_id"].astype(str).unique()) == ["day_1", "night"] and len(df) == 5
        assert pq.read_table(f"results/recon/s3run/{table}", filesystem=fs).num_rows == 5
    assert len(pd.read_parquet("s3://results/recon/s3run/manifest.parquet", storage_options=options)) == 3

    ref = reference_frames(
        tiny_checkpoint,
        [f"s3://capture/takes/night/{p.name}" for p in local["night"]],
        storage_options={"endpoint_url": s3.endpoint_url},
    )
    night = [r for r in outputs.frames.to_pylist() if r["sequence_id"] == "night"]
    for row, frame in zip(night, ref):
        assert row["source_uri"] == f"s3://capture/takes/night/frame{frame.index + 1}.png"
        np.testing.assert_allclose(np.array(row["extrinsic"]).reshape(3, 4), frame.extrinsic, rtol=1e-5, atol=1e-6)
    ply = parse_ply(fs.cat_file("results/recon/s3run/points/night.ply"))
    want = expected_points(ref, 0.0, percentile=50)  # the default: the released demo's 50th percentile
    np.testing.assert_allclose(ply["z"], want["z"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ply["red"], want["red"])

    # nothing secret in what the run wrote
    stored = fs.cat_file("results/recon/s3run/spec.json").decode()
    assert json.loads(stored)["storage"]["endpoint_url"] == s3.endpoint_url
    for key in (
        "results/recon/s3run/spec.json",
        "results/recon/s3run/summary.json",
        "results/recon/s3run/_commits/night.json",
    ):
        assert "testing" not in fs.cat_file(key).decode()  # the fake credentials
    manifest = io.BytesIO(fs.cat_file("results/recon/s3run/manifest.parquet"))
    assert b"AWS_SECRET" not in manifest.getvalue()
