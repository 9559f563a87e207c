"""Exports and the report on S3 (moto's server over HTTP), written by a run and by the commands,
read back with pycolmap and opened in Chromium straight from the endpoint."""

from __future__ import annotations

import json

import numpy as np
import pycolmap
import pytest
import s3fs
from selenium.webdriver.common.by import By

from pipeline import read_outputs, run_job
from pipeline.cli import main
from pipeline.spec import StorageSpec
from pipeline.testing.browser import chromium, load_page, wait_for_images
from pipeline.testing.s3server import LocalS3

from ..conftest import make_spec, write_sequence

pytestmark = pytest.mark.timeout(300)


def test_exports_and_report_on_s3(ray_cluster, tiny_checkpoint, tmp_path, s3, capsys):
    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url)
    for name, n in (("walk", 3), ("turn", 2)):
        write_sequence(tmp_path / "in" / name, n, seed=n)
    fs.put(str(tmp_path / "in") + "/", "capture/export-takes/", recursive=True)
    spec = make_spec(
        "s3://capture/export-takes", "s3://results/export-recon", tiny_checkpoint, run_id="s3x",
        storage__endpoint_url=s3.endpoint_url, exports="[{format: colmap, points: 2000}]", report__points=2000,
    )
    assert run_job(spec).done == 2
    run = "results/export-recon/s3x"
    fs.invalidate_cache()
    assert not fs.exists(f"{run}/_staging")
    outputs = read_outputs(spec.run_uri, StorageSpec(endpoint_url=s3.endpoint_url))
    for sid in ("walk", "turn"):
        assert fs.exists(f"{run}/exports/colmap/{sid}/images/frame_00000.jpg")
        local = tmp_path / "colmap" / sid
        fs.get(f"{run}/exports/colmap/{sid}/sparse/0/", str(local) + "/", recursive=True)
        rec = pycolmap.Reconstruction(str(local))
        assert rec.num_points3D() == 2000
        for row in outputs.sequence_frames(sid):
            E = np.asarray(row["extrinsic"], np.float64).reshape(3, 4)
            np.testing.assert_allclose(rec.images[row["frame_index"] + 1].cam_from_world().matrix(), E, atol=1e-6)
        marker = json.loads(fs.cat_file(f"{run}/_commits/{sid}.json"))  # folder outputs: listed by markers
        assert marker["outputs"]["previews"] == f"s3://{run}/previews/{sid}" and sid in outputs.committed
    assert fs.info(f"{run}/report.html")["ContentType"] == "text/html"

    # later: a nerfstudio export of the finished run (it saved no depth maps: exported without)
    ep = ["--endpoint-url", s3.endpoint_url, "--no-progress"]
    assert main(["export", f"s3://{run}", "--format", "{format: nerfstudio, points: 500}", *ep]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == {}
    doc = json.loads(fs.cat_file(f"{run}/exports/nerfstudio/walk/transforms.json"))
    assert len(doc["frames"]) == 3 and "depth_file_path" not in doc["frames"][0]
    assert fs.exists(f"{run}/exports/nerfstudio/walk/{doc['ply_file_path']}")
    marker = json.loads(fs.cat_file(f"{run}/_commits/walk.json"))
    assert marker["outputs"]["exports/nerfstudio"] == f"s3://{run}/exports/nerfstudio/walk"
    fs.rm(f"{run}/report.html")
    assert main(["report", f"s3://{run}", *ep]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == f"s3://{run}/report.html"

    # the report works from the bucket itself, served over HTTP (here: a bucket readable by anyone,
    # as for S3 static website hosting)
    _public_read(s3, "results")
    with chromium() as driver:
        load_page(driver, f"{s3.endpoint_url}/{run}/report.html")
        assert wait_for_images(driver) == 4
        assert "nerfstudio" in driver.find_element(By.CSS_SELECTOR, ".card[data-id=walk]").text


def _public_read(s3: LocalS3, bucket: str) -> None:
    import boto3

    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}],
    }
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
