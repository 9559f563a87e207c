"""Hostile names on the shared Ray cluster: every folder reconstructed exactly once, nothing written
outside `<output>/<run_id>/`, run ids that point elsewhere refused (issue 20, items 1 and 3)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from pipeline import read_outputs, run_job
from pipeline.cli import main
from pipeline.discovery import short_hash
from pipeline.errors import SpecError
from pipeline.layout import FRAMES, RunLayout

from .conftest import make_spec, write_sequence

pytestmark = pytest.mark.timeout(240)


def _files(root: Path) -> dict[str, int]:
    """Every file and folder under `root`, with its modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            found[path] = os.stat(path).st_mtime_ns
    return found


def test_every_folder_once_and_nothing_written_outside_the_run(ray_cluster, tiny_checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    names = [
        "p q",
        "p_q",
        f"p_q-{short_hash(str(inputs / 'p q'))}",  # what `p q` is renamed to when it clashes with `p_q`
        "Scene",
        "scene",  # the same file as Scene on a case-insensitive disk
        "-rf",
        "a=b",
        "_commits",
        "x" * 150,
    ]
    for i, name in enumerate(names):
        write_sequence(inputs / name, 2, seed=i)
    job = tmp_path / "job.json"
    job.write_text(make_spec(inputs, tmp_path / "out", tiny_checkpoint, run_id="hostile").to_json())
    before = _files(tmp_path)

    assert main(["run", str(job), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["sequences"], summary["done"], summary["failed"]) == (len(names), len(names), 0)

    run = tmp_path / "out" / "hostile"
    changed = {p for p, t in _files(tmp_path).items() if before.get(p) != t}
    outside = {p for p in changed if not p.startswith(f"{run}{os.sep}")} - {str(tmp_path / "out"), str(run)}
    assert not outside, sorted(outside)

    outputs = read_outputs(str(run))
    manifest = outputs.manifest.to_pylist()
    assert sorted(r["source_uri"] for r in manifest) == sorted(str(inputs / n) for n in names)  # each once
    ids = [r["sequence_id"] for r in manifest]
    assert len({i.casefold() for i in ids}) == len(names)
    frames = outputs.frames.to_pylist()
    sequence_of = {r["source_uri"]: r["sequence_id"] for r in manifest}
    assert all(sequence_of[os.path.dirname(f["source_uri"])] == f["sequence_id"] for f in frames)
    assert Counter(f["sequence_id"] for f in frames) == {sid: 2 for sid in ids}  # every frame, once


def test_a_rerun_keeps_the_ids_it_gave_out_when_folders_are_added(ray_cluster, tiny_checkpoint, tmp_path):
    """`p q` was committed as p_q; a folder `p_q` added later gets another id, and `p q` is not
    redone under a new one (which would count it twice)."""
    inputs = tmp_path / "in"
    write_sequence(inputs / "p q", 2, seed=0)
    spec = make_spec(inputs, tmp_path / "out", tiny_checkpoint, run_id="grow")
    first = run_job(spec)
    assert (first.sequences, first.done) == (1, 1)
    marker = (tmp_path / "out" / "grow" / "_commits" / "p_q.json").read_text()

    write_sequence(inputs / "p_q", 2, seed=1)
    second = run_job(spec)
    assert (second.sequences, second.done, second.failed) == (2, 2, 0), second
    assert (tmp_path / "out" / "grow" / "_commits" / "p_q.json").read_text() == marker  # not redone
    manifest = read_outputs(spec.run_uri).manifest.to_pylist()
    assert sorted(r["source_uri"] for r in manifest) == [str(inputs / "p q"), str(inputs / "p_q")]


def test_run_ids_from_any_source_cannot_leave_the_output_folder(ray_cluster, tiny_checkpoint, tmp_path, capsys):
    write_sequence(tmp_path / "in" / "a", 2, seed=0)
    output = tmp_path / "deep" / "er" / "out"
    spec = make_spec(tmp_path / "in", output, tiny_checkpoint)
    job = tmp_path / "job.json"
    job.write_text(spec.to_json())
    before = _files(tmp_path)

    assert main(["run", str(job), "--no-progress", "--run-id", "../../etc"]) == 2  # the command line
    assert "run_id '../../etc' is not a safe name" in capsys.readouterr().err
    assert main(["run", str(job), "--no-progress", "--set", "run_id=../../etc"]) == 2  # an override
    with pytest.raises(SpecError, match="run_id"):
        spec.with_run_id("../../etc")  # the Python API
    with pytest.raises(SpecError, match="run_id"):
        run_job(spec.model_copy(update={"run_id": "/etc"}))  # a copy that skipped validation
    with pytest.raises(SpecError, match="run_id"):
        run_job(spec.model_copy(update={"run_id": ".."}))
    with pytest.raises(SpecError, match="sequence id"):
        RunLayout(str(output / "r")).final("../../x", FRAMES)
    assert _files(tmp_path) == before  # nothing written anywhere
