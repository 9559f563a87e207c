"""Fault injection: a worker process dies, a node disappears, the driver is killed and resumed.

Each time the run must finish with every sequence committed exactly once and nothing lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from pipeline import run_job
from pipeline.testing.faults import ACTOR_CRASH_POINT, FaultPlan, injected

from .conftest import make_spec, reference_frames, write_sequence

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]


def _frames_by_sequence(run_uri: str) -> dict[str, list[int]]:
    table = ds.dataset(os.path.join(run_uri, "frames"), partitioning="hive").to_table()
    out: dict[str, list[int]] = {}
    for row in table.select(["sequence_id", "frame_index"]).to_pylist():
        out.setdefault(row["sequence_id"], []).append(row["frame_index"])
    return {k: sorted(v) for k, v in out.items()}


def _markers(run_uri: str) -> dict[str, tuple[int, str]]:
    """Commit markers (a killed writer may also have left a marker's temporary file)."""
    folder = os.path.join(run_uri, "_commits")
    return {
        name[: -len(".json")]: (
            os.stat(os.path.join(folder, name)).st_mtime_ns,
            json.load(open(os.path.join(folder, name)))["attempt_id"],
        )
        for name in os.listdir(folder)
        if name.endswith(".json")
    }


def _frame_writer_processes() -> set[int]:
    """Processes started by multiprocessing's spawn on this machine (frame writers among them)."""
    pids = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    pids.add(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def test_worker_killed_mid_sequence_is_retried(ray_cluster, tiny_checkpoint, tmp_path):
    writers_before = _frame_writer_processes()
    sizes = {"a": 2, "b": 3, "c": 2}
    paths = {k: write_sequence(tmp_path / "in" / k, n, seed=n) for k, n in sizes.items()}
    marker = tmp_path / "crashed-once"
    spec = make_spec(  # also: a non-default engine goes through the pipeline unchanged
        tmp_path / "in",
        tmp_path / "out",
        tiny_checkpoint,
        run_id="crash",
        engine__mode="streaming",
        engine__window=2,
        resources__frame_writers=1,  # the killed worker's writer process must not outlive it
    )
    seen: set[int] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(_frame_writer_processes() - writers_before)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with injected(FaultPlan(crash_point=ACTOR_CRASH_POINT, crash_sequence="b", once_file=str(marker))):
            summary = run_job(spec)
    finally:
        done.set()
        watcher.join()
    assert len(seen) >= 2, "writer processes of the killed worker and of its replacement"
    assert marker.exists(), "the fault was never injected"
    assert (summary.done, summary.failed) == (3, 0), summary
    killed_pid = json.loads(marker.read_text())["pid"]
    leftovers = [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"zipmap-frames-{killed_pid}-")]
    assert leftovers == [], "the replacement worker removes the killed one's item folder"
    assert _frames_by_sequence(spec.run_uri) == {k: list(range(n)) for k, n in sizes.items()}
    manifest = {
        r["sequence_id"]: r for r in ds.dataset(os.path.join(spec.run_uri, "manifest.parquet")).to_table().to_pylist()
    }
    assert manifest["b"]["attempts"] == 2 and manifest["b"]["status"] == "done"
    # the retried sequence is still exactly what the engine computes
    ref = reference_frames(tiny_checkpoint, paths["b"], engine=spec.engine)
    rows = sorted(
        (
            r
            for r in ds.dataset(os.path.join(spec.run_uri, "frames"), partitioning="hive").to_table().to_pylist()
            if r["sequence_id"] == "b"
        ),
        key=lambda r: r["frame_index"],
    )
    for row, frame in zip(rows, ref):
        np.testing.assert_allclose(np.array(row["extrinsic"]).reshape(3, 4), frame.extrinsic, rtol=1e-5, atol=1e-6)
    assert not os.path.exists(os.path.join(spec.run_uri, "_staging"))
    deadline = time.monotonic() + 30
    while _frame_writer_processes() - writers_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _frame_writer_processes() - writers_before, "frame writer processes outlived their actors"


@pytest.mark.slow
def test_node_lost_while_work_is_in_flight(ray_cluster, tiny_checkpoint, tmp_path):
    """Two worker nodes (1 CPU each) host the model actors; one is removed mid-run."""
    sizes = {f"s{i}": 2 for i in range(6)}
    for k, n in sizes.items():
        write_sequence(tmp_path / "in" / k, n, seed=int(k[1:]))
    nodes = [ray_cluster.add_node(num_cpus=1, resources={"model_slot": 1}) for _ in range(2)]
    ray_cluster.wait_for_nodes()
    spec = make_spec(
        tmp_path / "in",
        tmp_path / "out",
        tiny_checkpoint,
        run_id="nodeloss",
        resources__num_actors=2,
        resources__custom_resources="{model_slot: 1}",
        resources__max_in_flight_per_actor=1,
        retry__max_attempts=4,
    )
    result = {}

    def run():
        with injected(FaultPlan(delay_s=1.5)):
            result["summary"] = run_job(spec)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        commits = Path(spec.run_uri) / "_commits"
        deadline = time.monotonic() + 120
        while not (commits.exists() and any(commits.iterdir())):  # both actors are up and working
            assert time.monotonic() < deadline, "no sequence was committed"
            time.sleep(0.1)
        ray_cluster.remove_node(nodes[0], allow_graceful=False)
        runner.join(timeout=180)
        assert not runner.is_alive()
    finally:
        for node in nodes[1:]:
            ray_cluster.remove_node(node)
    summary = result["summary"]
    assert (summary.done, summary.failed) == (6, 0), summary
    assert _frames_by_sequence(spec.run_uri) == {k: list(range(n)) for k, n in sizes.items()}
    manifest = ds.dataset(os.path.join(spec.run_uri, "manifest.parquet")).to_table().to_pylist()
    assert any(r["attempts"] > 1 for r in manifest), "no sequence was in flight on the lost node"


@pytest.mark.slow
def test_driver_killed_then_resumed(ray_cluster, tiny_checkpoint, tmp_path):
    """The job entrypoint's driver is SIGKILLed after its first commit; `zipmap-pipeline resume`
    finishes the run without redoing what was committed."""
    sizes = {f"take{i}": 2 for i in range(4)}
    for k, n in sizes.items():
        write_sequence(tmp_path / "in" / k, n, seed=len(k) + n)
    spec = make_spec(
        tmp_path / "in",
        tmp_path / "out",
        tiny_checkpoint,
        run_id="killed",
        resources__max_in_flight_per_actor=1,
    )
    spec_path = tmp_path / "job.json"
    spec_path.write_text(spec.to_json())
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(  # slowed down, so that it is killed with work in flight
        [sys.executable, "-m", "jobs.reconstruct", "--spec", str(spec_path)],
        cwd=REPO,
        env={**env, **FaultPlan(delay_s=1.0).env()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    commits = Path(spec.run_uri) / "_commits"
    deadline = time.monotonic() + 120
    # a marker, not the temporary file of its atomic write (killed then, the driver committed nothing)
    while not (commits.exists() and any(p.suffix == ".json" for p in commits.iterdir())):
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the driver committed nothing"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    before = _markers(spec.run_uri)
    assert 1 <= len(before) < len(sizes)

    resumed = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "resume", spec.run_uri, "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)
    assert (summary["done"], summary["failed"]) == (4, 0)
    after = _markers(spec.run_uri)
    assert set(after) == set(sizes)
    assert sorted(os.listdir(commits)) == sorted(f"{k}.json" for k in sizes)  # no torn marker writes left
    assert {k: after[k] for k in before} == before  # committed sequences were not redone
    assert _frames_by_sequence(spec.run_uri) == {k: list(range(n)) for k, n in sizes.items()}
    assert not (Path(spec.run_uri) / "_staging").exists()
