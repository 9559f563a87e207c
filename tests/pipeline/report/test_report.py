"""The run report: previews and GLB scenes read back with the libraries users use (Pillow,
trimesh), and report.html opened in a real headless Chromium, for a small run and for 1,000
sequences. Set ZIPMAP_TEST_ARTIFACTS to a folder to keep the screenshots."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
import trimesh
from PIL import Image
from selenium.webdriver.common.by import By

from pipeline import read_outputs
from pipeline.exports.sequence import ExportSequence
from pipeline.layout import RunLayout
from pipeline.manifest import SequenceRecord, write_manifest
from pipeline.report.html import write_report
from pipeline.storage import Store
from pipeline.testing.browser import chromium, load_page, screenshot, wait_for_images

from ..exports.ground_truth import SCENES, ground_truth_run

pytestmark = pytest.mark.timeout(300)
PREVIEW_POINTS = 2000


def _artifact(name: str) -> str | None:
    folder = os.environ.get("ZIPMAP_TEST_ARTIFACTS")
    if not folder:
        return None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


@pytest.fixture(scope="module")
def gt_run(tmp_path_factory):
    run_uri, frames = ground_truth_run(
        tmp_path_factory.mktemp("report"), num_frames=6, exports="[{format: colmap, points: 1000}]",
        report__points=PREVIEW_POINTS,
    )
    write_report(run_uri)
    return {"run_uri": run_uri, "frames": frames}


def test_glb_holds_the_sampled_points_and_one_frustum_per_camera(gt_run):
    outputs = read_outputs(gt_run["run_uri"])
    for name, frames in gt_run["frames"].items():
        scene = trimesh.load(os.path.join(gt_run["run_uri"], "previews", name, "scene.glb"), file_type="glb")
        points, cameras = scene.geometry["points"], scene.geometry["cameras"]
        rows = outputs.sequence_frames(name)
        sample = ExportSequence(name, rows, outputs.point_cloud(name), True).sample(PREVIEW_POINTS)
        np.testing.assert_array_equal(points.vertices, np.stack([sample.vertices[k] for k in "xyz"], 1))
        colours = np.stack([sample.vertices[k] for k in ("red", "green", "blue")], 1)
        np.testing.assert_array_equal(points.colors[:, :3], colours)
        # one frustum (apex + 4 corners + a tick above) per camera, its apex at the camera centre
        apexes = cameras.vertices.reshape(len(frames), -1, 3)[:, 0]
        centres = [-f.extrinsic[:, :3].T @ f.extrinsic[:, 3] for f in frames]
        np.testing.assert_allclose(apexes, centres, atol=1e-5)
        # the world node turns OpenCV axes (y down, z forward) into glTF's (y up, z backwards)
        matrix, _ = scene.graph["points"]
        np.testing.assert_allclose(matrix, np.diag([1.0, -1.0, -1.0, 1.0]))


def test_previews_are_pictures_of_the_sequence(gt_run):
    for name in gt_run["frames"]:
        folder = os.path.join(gt_run["run_uri"], "previews", name)
        for file, size in (("trajectory.png", (320, 320)), ("points.png", (400, 300))):
            with Image.open(os.path.join(folder, file)) as image:
                pixels = np.asarray(image.convert("RGB"))
                assert image.size == size
                # drawn on: well over 1% of the pixels differ from the background
                assert (np.abs(pixels.astype(int) - [246, 246, 244]).sum(-1) > 30).mean() > 0.01, file
        stats = json.load(open(os.path.join(folder, "stats.json")))
        assert stats["frames"] == 6 and stats["path_length"] > 0 and stats["median_depth"] > 0


def test_report_opens_in_chromium_with_every_preview(gt_run):
    page = os.path.join(gt_run["run_uri"], "report.html")
    with chromium() as driver:
        timing = load_page(driver, f"file://{page}")
        assert timing.load_ms > 0
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert [c.get_attribute("data-id") for c in cards] == sorted(SCENES)
        assert wait_for_images(driver) == 2 * len(SCENES)  # every preview is there and decodes
        if path := _artifact("report_small.png"):
            screenshot(driver, path)
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "succeeded" in text and "colmap" in text
        links = [a.get_attribute("href") for a in driver.find_elements(By.TAG_NAME, "a")]
        for name in SCENES:
            for target in (f"previews/{name}/scene.glb", f"points/{name}.ply", f"exports/colmap/{name}/"):
                assert any(h.endswith(target) for h in links), target
        driver.find_element(By.ID, "filter").send_keys("room")
        assert driver.find_element(By.ID, "shown").text == "1"


def _fabricate_run(source_run: str, target: str, sequences: int, failed: int) -> list[str]:
    """A run folder of `sequences` committed sequences (copies of one real sequence's outputs and
    previews, hard-linked) and `failed` failed ones, as a large run leaves it."""
    shutil.copytree(source_run, target, ignore=shutil.ignore_patterns("_commits", "report.html"))
    store, layout = Store(target), RunLayout(target)
    template = json.load(open(os.path.join(source_run, "_commits", "room_orbit.json")))
    previews = os.path.join(target, "previews", "room_orbit")
    ids, records = [f"seq{i:05d}" for i in range(sequences)], []
    for sid in ids:
        os.makedirs(os.path.join(target, "previews", sid))
        for name in os.listdir(previews):
            os.link(os.path.join(previews, name), os.path.join(target, "previews", sid, name))
        marker = dict(template, sequence_id=sid)
        marker["outputs"] = {k: v.replace(source_run, target).replace("room_orbit", sid)
                             for k, v in template["outputs"].items()}
        store.write_json(layout.commit_marker(sid), marker)
        records.append(SequenceRecord.from_marker(marker))
    records += [SequenceRecord(f"bad{i:03d}", status="failed", attempts=1, error_kind="input",
                               error=f"sequence bad{i:03d}: frame not found") for i in range(failed)]
    write_manifest(store, layout, records)
    return ids


def test_report_of_a_1000_sequence_run_loads_fast(gt_run, tmp_path):
    """1,000 sequences: the page holds every card but fetches only the previews on screen."""
    run = str(tmp_path / "big")
    _fabricate_run(gt_run["run_uri"], run, 1000, 20)
    start = time.perf_counter()
    write_report(run, fill_previews=False)
    write_s = time.perf_counter() - start
    size = os.path.getsize(os.path.join(run, "report.html"))
    with chromium() as driver:
        timing = load_page(driver, f"file://{run}/report.html")
        cards = driver.execute_script("return document.querySelectorAll('.card').length")
        shown = driver.find_element(By.ID, "shown").text
        if path := _artifact("report_1000.png"):
            screenshot(driver, path, full_page=False)
    print(
        f"\n1000-sequence report: written in {write_s:.2f} s, {size / 1e6:.2f} MB; DOMContentLoaded "
        f"{timing.dom_content_loaded_ms:.0f} ms, load {timing.load_ms:.0f} ms, first paint "
        f"{timing.first_contentful_paint_ms} ms, images loaded {timing.images_loaded} of {timing.images_total}"
    )
    assert cards == 1020 and shown == "1020"
    assert timing.images_total == 2000 and timing.images_loaded < 100  # lazy: the rest load on scroll
    assert size < 2_000_000
    assert timing.load_ms < 5000  # ~0.3 s on a quiet 2-core machine; generous for a busy CI host
