"""`zipmap-pipeline export|report` and the spec's `exports:`: usage errors, partial failures,
and folder outputs in the commit protocol (nothing uncommitted survives a restart)."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.cli import main
from pipeline.commit import clean_uncommitted
from pipeline.errors import SpecError
from pipeline.layout import RunLayout
from pipeline.storage import Store

from ..conftest import make_spec
from .ground_truth import commit_run, ground_truth_frames, write_sources


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    frames = ground_truth_frames("room_orbit", num_frames=3)
    sequences = {sid: (frames, write_sources(root / "in" / sid, frames)) for sid in ("a", "b")}
    spec = make_spec(root / "in", root / "out", None, run_id="r", model__allow_random_weights="true",
                     report__points=500)
    return {"run_uri": commit_run(spec, sequences), "root": root}


def test_spec_exports_take_names_or_options():
    spec = make_spec("x", "o", None, model__allow_random_weights="true",
                     exports="[colmap, {format: nerfstudio, depth: false, points: 10}]")
    assert [e.format for e in spec.exports] == ["colmap", "nerfstudio"]
    assert spec.exports[0].points == 100_000 and spec.exports[1].points == 10
    for bad, message in (
        ("[colmap, colmap]", "more than once"),
        ("[gaussians]", "does not match any of the expected tags"),
        ("[{format: colmap, points: -1}]", "greater than or equal to 0"),
        ("[{format: nerfstudio, images: source}]", "set depth: false"),
    ):
        with pytest.raises(SpecError, match=message):
            make_spec("x", "o", None, model__allow_random_weights="true", exports=bad)
    assert "exports" not in spec.result_fields()  # a resumed run may add or drop formats


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "colmop"], "unknown export format 'colmop'"),
        (["--format", "{format: colmap, pts: 1}"], "pts: Extra inputs are not permitted"),
        (["--format", "colmap", "--sequences", "zz"], "not committed sequences of"),
    ],
)
def test_export_usage_errors_exit_2(small_run, args, message, capsys):
    assert main(["export", small_run["run_uri"], "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err


def test_export_of_a_folder_that_is_no_run_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "colmap", "--no-progress"]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--no-progress"]) == 2


def test_a_sequence_that_cannot_be_exported_is_reported_and_the_others_go_on(small_run, capsys):
    run_uri, root = small_run["run_uri"], small_run["root"]
    gone = root / "in" / "b" / "frame_001.png"
    saved = gone.read_bytes()
    gone.unlink()
    try:
        assert main(["export", run_uri, "--format", "colmap", "--no-progress"]) == 1
    finally:
        gone.write_bytes(saved)
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["exported"]) == ["a"] and "frame_001.png" in printed["failed"]["b"]
    marker = json.load(open(os.path.join(run_uri, "_commits", "b.json")))
    assert "exports/colmap" not in marker["outputs"] and not os.path.exists(os.path.join(run_uri, "_staging"))


def test_report_command_makes_missing_previews(small_run, capsys):
    run_uri = small_run["run_uri"]
    store, layout = Store(run_uri), RunLayout(run_uri)
    marker = store.read_json(layout.commit_marker("a"))
    store.delete(marker["outputs"].pop("previews"))  # as if committed by a run without previews
    store.write_json(layout.commit_marker("a"), marker)
    assert main(["report", run_uri, "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == layout.report
    assert os.path.exists(os.path.join(run_uri, "previews", "a", "scene.glb"))
    assert store.read_json(layout.commit_marker("a"))["outputs"]["previews"] == layout.final("a", "previews")
    assert "previews/a/trajectory.png" in open(layout.report).read()


def test_restart_removes_folder_outputs_without_a_marker(small_run):
    run_uri = small_run["run_uri"]
    store, layout = Store(run_uri), RunLayout(run_uri)
    for kind in ("previews", "exports/colmap", "exports/nerfstudio"):
        store.write_bytes(f"{layout.final('torn', kind)}/partial.bin", b"x")  # a commit that never finished
    clean_uncommitted(store, layout, {"a", "b"})
    for kind in ("previews", "exports/colmap", "exports/nerfstudio"):
        assert not store.exists(layout.final("torn", kind)), kind
    assert store.exists(layout.final("a", "previews"))
