"""Exports and the report from a real run: the bundled demo model on held-out synthetic scenes, on
the shared Ray cluster. The model's own cameras and depth maps are the reference here."""

from __future__ import annotations

import json
import os

import numpy as np
import pycolmap
import pytest
from selenium.webdriver.common.by import By

from pipeline import read_outputs, run_job
from pipeline.cli import main
from pipeline.testing.browser import chromium, load_page, screenshot, wait_for_images
from zipmap_core.assets import demo_checkpoint_path
from zipmap_core.synthetic import generate_dataset

from ..conftest import make_spec

pytestmark = pytest.mark.timeout(300)
SIZE = (224, 168)


@pytest.fixture(scope="module")
def demo_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_exports")
    generate_dataset(str(root / "in"), 2, None, 6, SIZE[1], SIZE[0], seeds=[900_101, 900_102], progress=False)
    spec = make_spec(
        root / "in", root / "out", demo_checkpoint_path("demo_ttt"), run_id="demo", model__preset="demo_ttt",
        preprocess__size=SIZE[0], save_depth="true", exports="[colmap, nerfstudio]", report__points=20000,
    )
    summary = run_job(spec)
    assert summary.done == 2, summary
    return {"run_uri": spec.run_uri, "root": root, "outputs": read_outputs(spec.run_uri)}


def test_every_exported_model_reads_back_with_our_cameras(demo_run):
    outputs = demo_run["outputs"]
    for sid in outputs.committed:
        rec = pycolmap.Reconstruction(os.path.join(demo_run["run_uri"], "exports", "colmap", sid, "sparse", "0"))
        rows = outputs.sequence_frames(sid)
        assert rec.num_images() == len(rows) == 6 and rec.num_points3D() > 1000
        for row in rows:
            image = rec.images[row["frame_index"] + 1]
            E = np.asarray(row["extrinsic"], np.float64).reshape(3, 4)
            K = np.asarray(row["intrinsic"], np.float64).reshape(3, 3)
            np.testing.assert_allclose(image.cam_from_world().matrix(), E, atol=1e-6)
            np.testing.assert_allclose(image.projection_center(), -E[:, :3].T @ E[:, 3], atol=1e-5)
            camera = rec.cameras[image.camera_id]
            assert (camera.width, camera.height) == (row["width"], row["height"]) == SIZE
            np.testing.assert_allclose(camera.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5], rtol=1e-6)


def test_points_reproject_where_our_depth_maps_put_them(demo_run):
    """Against the run's depth table: a point's pixel is the one whose depth unprojects to it."""
    outputs, errors = demo_run["outputs"], []
    for sid in outputs.committed:
        rec = pycolmap.Reconstruction(os.path.join(demo_run["run_uri"], "exports", "colmap", sid, "sparse", "0"))
        rows = outputs.sequence_frames(sid)
        depth = {r["frame_index"]: np.asarray(r["depth"], np.float64).reshape(r["height"], r["width"])
                 for r in outputs.sequence_depth(sid).to_pylist()}
        for point in rec.points3D.values():
            (element,) = point.track.elements
            image, row = rec.images[element.image_id], rows[element.image_id - 1]
            E = np.asarray(row["extrinsic"], np.float64).reshape(3, 4)
            K = np.asarray(row["intrinsic"], np.float64).reshape(3, 3)
            local = E[:, :3] @ point.xyz + E[:, 3]
            col = int(round(K[0, 0] * local[0] / local[2] + K[0, 2]))
            r = int(round(K[1, 1] * local[1] / local[2] + K[1, 2]))
            d = depth[row["frame_index"]][r, col]
            ray = np.array([(col - K[0, 2]) / K[0, 0], (r - K[1, 2]) / K[1, 1], 1.0])
            np.testing.assert_allclose(E[:, :3].T @ (d * ray - E[:, 3]), point.xyz, rtol=1e-4, atol=1e-5)
            projected = rec.cameras[image.camera_id].img_from_cam(image.cam_from_world() * point.xyz)
            errors.append(np.linalg.norm(projected - [col + 0.5, r + 0.5]))
    print(f"\nreprojection error against the depth maps: max {max(errors):.2e} px over {len(errors)} points")
    assert max(errors) < 0.5


def test_the_export_command_rewrites_the_same_files(demo_run, capsys):
    run_uri = demo_run["run_uri"]
    before = {fmt: _files(os.path.join(run_uri, "exports", fmt)) for fmt in ("colmap", "nerfstudio")}
    assert main(["export", run_uri, "--format", "colmap", "--format", "nerfstudio", "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["exported"]) == set(demo_run["outputs"].committed) and printed["failed"] == {}
    for fmt, files in before.items():
        assert _files(os.path.join(run_uri, "exports", fmt)) == files, fmt  # byte for byte


def test_the_run_wrote_its_report_with_the_previews(demo_run):
    run_uri = demo_run["run_uri"]
    page = os.path.join(run_uri, "report.html")
    assert os.path.exists(page)
    with chromium() as driver:
        load_page(driver, f"file://{page}")
        assert wait_for_images(driver) == 4
        assert len(driver.find_elements(By.CSS_SELECTOR, ".card[data-status=done]")) == 2
        text = driver.find_element(By.TAG_NAME, "body").text  # the engine as asked and as each sequence ran
        assert "auto, auto" in text and "ran with offline, float32 (2 sequences)" in text, text
        if folder := os.environ.get("ZIPMAP_TEST_ARTIFACTS"):
            os.makedirs(folder, exist_ok=True)
            screenshot(driver, os.path.join(folder, "report_demo_model.png"))


def _files(folder: str) -> dict[str, bytes]:
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out
