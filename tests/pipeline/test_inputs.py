"""Real captures on the shared Ray cluster: more containers and image types, fps sampling in a
run, every skipped input counted and logged, and oversized frames failed once as bad input."""

from __future__ import annotations

import json
import os

import pyarrow.dataset as ds
import pytest

from pipeline import run_job, run_status
from pipeline.testing.media import encode_video, index_pattern, write_blank_png

from .conftest import IMAGE_H, IMAGE_W, make_spec, write_sequence

pytestmark = pytest.mark.timeout(240)
av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def captures_run(ray_cluster, tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("captures")
    inputs = root / "in"
    write_sequence(inputs / "ok", 3, seed=0)
    write_sequence(inputs / "tifs", 2, seed=1, ext=".tif")
    write_sequence(inputs / "scene" / "images", 2, seed=2)  # a nested folder
    for name, side in (("bomb", 30000), ("huge", 13000)):  # 900 MP and 169 MP in a few hundred kB
        (inputs / name).mkdir()
        for i in range(2):
            write_blank_png(inputs / name / f"{i}.png", side, side)
    frames = [index_pattern(i, IMAGE_W, IMAGE_H) for i in range(12)]
    encode_video(inputs / "walk.webm", frames, rate=30, codec="libvpx")
    encode_video(inputs / "walk2.m4v", frames, rate=30)
    (inputs / "notes.txt").write_text("shot on a sunny day")
    (inputs / ".DS_Store").write_bytes(b"\x00")
    (inputs / "stray.png").write_bytes((inputs / "ok" / "frame1.png").read_bytes())
    (inputs / "phone").mkdir()
    (inputs / "phone" / "IMG_0001.HEIC").write_bytes(b"\x00")
    (inputs / "empty").mkdir()
    spec = make_spec(inputs, root / "out", tiny_checkpoint, run_id="captures", input__fps=10, retry__max_attempts=3)
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pipeline.discovery")
    logger.addHandler(handler)
    try:
        summary = run_job(spec, raise_on_failure=False)  # bomb and huge fail as bad input
    finally:
        logger.removeHandler(handler)
    return {"spec": spec, "summary": summary, "log": "\n".join(r.getMessage() for r in records)}


def test_oversized_frames_fail_once_as_bad_input(captures_run):
    failures = {f["sequence_id"]: f for f in captures_run["summary"].failures}
    assert set(failures) == {"bomb", "huge"}
    assert all(f["attempts"] == 1 and f["error_kind"] == "input" for f in failures.values())  # never retried
    assert "decompression bomb" in failures["bomb"]["error"]
    assert "13000x13000 is 169.0 megapixels, more than max_pixels=134217728" in failures["huge"]["error"]


def test_more_containers_image_types_and_nested_folders(captures_run):
    summary, run_uri = captures_run["summary"], captures_run["spec"].run_uri
    assert (summary.sequences, summary.done) == (7, 5)
    table = ds.dataset(os.path.join(run_uri, "frames"), partitioning="hive").to_table().to_pylist()
    uris: dict[str, list[str]] = {}
    for row in sorted(table, key=lambda r: (r["sequence_id"], r["frame_index"])):
        uris.setdefault(row["sequence_id"], []).append(row["source_uri"])
    assert {sid: len(u) for sid, u in uris.items()} == {"ok": 3, "tifs": 2, "scene_images": 2, "walk": 4, "walk2": 4}
    for sid in ("walk", "walk2"):  # 30 fps sampled at 10: every 3rd frame, from frame 2 (the released rule)
        assert [u.rsplit("#", 1)[1] for u in uris[sid]] == ["frame=2", "frame=5", "frame=8", "frame=11"]


def test_skipped_inputs_are_counted_and_logged(captures_run):
    summary, run_uri, log = captures_run["summary"], captures_run["spec"].run_uri, captures_run["log"]
    expected = {"empty_folder": 1, "hidden": 1, "image_at_prefix": 1, "not_media": 1, "unsupported_image": 1}
    assert summary.skipped_inputs == expected
    with open(os.path.join(run_uri, "summary.json")) as f:
        assert json.load(f)["skipped_inputs"] == expected
    assert run_status(run_uri).skipped_inputs == expected  # `status` of the finished run too
    for line in [
        "skipped input .DS_Store: hidden",
        "skipped input empty: an empty folder",
        "skipped input notes.txt: not an image or video file (type .txt)",
        "skipped input phone/IMG_0001.HEIC: an image type the pipeline does not decode",
        "skipped input stray.png: an image directly under the prefix",
        "skipped 5 input(s) under",
        "fps sampling does not apply to 5 image folder(s) without a capture rate",
    ]:
        assert line in log, line
