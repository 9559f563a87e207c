"""Real runs (Ray, the tiny model) whose driver dies inside the commit protocol, then resumed; and
a run whose committed outputs were torn apart, then read, checked and repaired.

Every crash point of pipeline.testing.faults is hit by a real process exit (`os._exit`) of a
`python -m jobs.reconstruct` driver, one after another on the same run: each session resumes what
the previous one left behind and dies at the next point. In between, no reader may see a torn
sequence, and the compact commit record must agree with the markers. At the end every sequence
is committed exactly once, with the outputs the engine computes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from pipeline import read_outputs, run_job
from pipeline.api import resume_job, run_status
from pipeline.commit_record import read_commits
from pipeline.layout import FRAMES, POINTS, RunLayout
from pipeline.storage import Store
from pipeline.testing.faults import COMMIT_CRASH_POINTS, CRASH_EXIT_CODE, FaultPlan

from .conftest import make_spec, parse_ply, write_sequence

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[2]


def _frames_by_sequence(run_uri: str) -> dict[str, list[int]]:
    """Every frame row of the frames folder read as one hive dataset (duplicates would show)."""
    table = ds.dataset(os.path.join(run_uri, FRAMES), partitioning="hive").to_table()
    out: dict[str, list[int]] = {}
    for row in table.select(["sequence_id", "frame_index"]).to_pylist():
        out.setdefault(row["sequence_id"], []).append(row["frame_index"])
    return {k: sorted(v) for k, v in out.items()}


def _attempts(run_uri: str) -> dict[str, str]:
    folder = os.path.join(run_uri, "_commits")
    return {n[:-5]: json.load(open(os.path.join(folder, n)))["attempt_id"] for n in os.listdir(folder)}


@pytest.mark.slow
def test_driver_killed_at_every_commit_crash_point_then_resumed(ray_cluster, tiny_checkpoint, tmp_path):
    sizes = {f"s{i}": 2 for i in range(6)}
    for k, n in sizes.items():
        write_sequence(tmp_path / "in" / k, n, seed=40 + int(k[1:]))
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="crashes",
                     resources__max_in_flight_per_actor=1)
    spec_path = tmp_path / "job.json"
    spec_path.write_text(spec.to_json())
    run, layout = spec.run_uri, RunLayout(spec.run_uri)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONPATH": str(REPO)}
    # session k dies at crash point k while committing s(k+1), having committed what came before
    # (the manifest write of the last session comes before any of its commits: it covers the
    # intents the sessions before it left)
    for k, point in enumerate(COMMIT_CRASH_POINTS):
        once = tmp_path / f"crashed-{k}"
        plan = FaultPlan(crash_point=point, crash_sequence=f"s{k + 1}", once_file=str(once))
        if point == "manifest.written":
            plan = FaultPlan(crash_point=point, once_file=str(once))
        args = ["--spec", str(spec_path)] if k == 0 else ["--resume", run]
        driver = subprocess.run(
            [sys.executable, "-m", "jobs.reconstruct", *args],
            cwd=REPO,
            env={**env, **plan.env()},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert driver.returncode == CRASH_EXIT_CODE, (point, driver.stderr[-3000:])
        assert json.loads(once.read_text())["point"] == point

        store = Store(run)
        commits = read_commits(store, layout, verify=True)
        assert commits.torn == {}, (point, commits.torn)
        if point == "commit.marker_written":
            assert f"s{k + 1}" in commits.committed  # died after its marker: committed
        if point in ("commit.intent_written", "commit.output_moved", "commit.outputs_moved"):
            assert f"s{k + 1}" not in commits.committed  # died before its marker: not committed
            assert f"s{k + 1}" in commits.intents  # and the intent tells the next session to clean up
        # the compact record (manifest + intents) and the listed markers agree
        assert set(commits.committed) == set(read_commits(store, layout).committed), point
        assert run_status(run).done == run_status(run, verify=True).done == len(commits.committed)

    before = _attempts(run)
    summary = resume_job(run)
    assert (summary.done, summary.failed) == (6, 0), summary
    after = _attempts(run)
    assert set(after) == set(sizes)
    assert {k: after[k] for k in before} == before  # nothing committed was redone
    assert _frames_by_sequence(run) == {k: list(range(n)) for k, n in sizes.items()}  # each exactly once
    out = read_outputs(run)
    assert set(out.committed) == set(sizes) and out.torn == {}
    for sid in sizes:
        ply = parse_ply(out.store.read_bytes(layout.final(sid, POINTS)))
        assert len(ply["x"]) == out.committed[sid].num_points
    assert not os.path.exists(layout.staging_root)
    assert not os.listdir(layout.intents)  # all compacted into the manifest
    assert read_commits(Store(run), layout).markers_read == 0


def test_torn_sequences_are_reported_then_redone(ray_cluster, tiny_checkpoint, tmp_path):
    """#20 item 2's end state, a marker whose frames Parquet and PLY are gone: the rest of the run
    stays readable, `status --verify` names it, and `resume` redoes it."""
    sizes = {"a": 2, "b": 3, "c": 2}
    for k, n in sizes.items():
        write_sequence(tmp_path / "in" / k, n, seed=60 + n)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="torn")
    assert run_job(spec).done == 3
    run, layout = spec.run_uri, RunLayout(spec.run_uri)
    store = Store(run)
    whole = read_outputs(run).frames
    before = _attempts(run)
    for kind in (FRAMES, POINTS):
        store.delete(layout.final_owner("b", kind))

    out = read_outputs(run)  # no FileNotFoundError
    assert set(out.committed) == {"a", "c"} and set(out.torn) == {"b"}
    assert "frames missing" in out.torn["b"] and "points missing" in out.torn["b"]
    assert sorted(set(out.frames.column("sequence_id").to_pylist())) == ["a", "c"]
    status = run_status(run, verify=True)
    assert (status.status, status.done, status.pending) == ("incomplete", 2, 1)
    assert status.torn == [{"sequence_id": "b", "problem": out.torn["b"]}]

    summary = resume_job(run)
    assert (summary.status, summary.done) == ("succeeded", 3), summary
    after = _attempts(run)
    assert after["a"] == before["a"] and after["c"] == before["c"] and after["b"] != before["b"]
    repaired = read_outputs(run)
    assert repaired.torn == {} and set(repaired.committed) == set(sizes)
    assert _frames_by_sequence(run) == {k: list(range(n)) for k, n in sizes.items()}
    for name in ("extrinsic", "intrinsic", "depth_mean"):  # the same results as before the damage
        np.testing.assert_allclose(
            np.array(repaired.frames.column(name).to_pylist(), dtype=np.float64),
            np.array(whole.column(name).to_pylist(), dtype=np.float64),
            rtol=1e-5,
            atol=1e-6,
        )
