"""Operating a run's driver on the shared Ray cluster: its log, its live status, one driver per run,
and a run that cannot make progress."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import read_outputs, resume_job, run_status
from pipeline.cli import main
from pipeline.spec import StorageSpec
from pipeline.testing.faults import ACTOR_CRASH_POINT, FaultPlan
from pipeline.testing.s3server import LocalS3

from .conftest import make_spec, write_sequence

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]


def _start_driver(
    ray_cluster, tmp_path: Path, spec, *args: str, faults: FaultPlan | None = None
) -> subprocess.Popen:
    """`zipmap-pipeline [args] run job.json` in its own process, joined to the shared cluster (with
    `faults` switched on in it and in the actors it starts)."""
    path = tmp_path / f"job-{spec.run_id}.json"
    path.write_text(spec.to_json())
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address, "PYTHONPATH": str(REPO)}
    env.update(faults.env() if faults else {})
    with open(tmp_path / "driver.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *args, "run", str(path)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log,
        )


def _wait_for(what: str, condition, driver: subprocess.Popen | None = None, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert driver is None or driver.poll() is None, f"the driver exited ({driver.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def _inputs(root: Path, count: int) -> Path:
    for i in range(count):
        write_sequence(root / f"take{i}", 2, seed=i)
    return root


def _events(log: str) -> list[dict]:
    """The event lines of a text log: `<time> <level> <logger>: <event> key=value ...`."""
    found = []
    for line in log.splitlines():
        words = line.split(": ", 1)[-1]
        event, _, rest = words.partition(" ")
        if not re.fullmatch(r"[a-z_]+", event) or "=" not in rest:
            continue
        pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', rest)
        fields = {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}
        found.append({"event": event, **fields})
    return found


def test_the_driver_log_has_one_line_per_sequence_state_change(ray_cluster, tiny_checkpoint, tmp_path):
    """start, done (frames, seconds), retried (kind), failed (kind, message) for every sequence, and
    progress as plain lines, never a carriage return, when stderr is a file."""
    inputs = _inputs(tmp_path / "in", 2)
    (inputs / "broken").mkdir()
    (inputs / "broken" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (inputs / "broken" / "b.png").write_bytes(b"")
    spec = make_spec(
        inputs, tmp_path / "out", tiny_checkpoint, run_id="logged",
        resources__max_in_flight_per_actor=1, driver__progress_interval_s=0.2,
    )
    crash = FaultPlan(crash_point=ACTOR_CRASH_POINT, crash_sequence="take1", once_file=str(tmp_path / "crashed"))
    driver = _start_driver(ray_cluster, tmp_path, spec, faults=crash)
    driver.wait(timeout=180)
    raw = (tmp_path / "driver.log").read_bytes()
    text = raw.decode()
    assert driver.returncode == 1, text[-3000:]  # one sequence failed
    assert b"\r" not in raw  # (read_text() would turn a carriage return into a newline)
    events: dict[str, list[dict]] = {}
    for event in _events(text):
        if event["event"].startswith("sequence_"):
            events.setdefault(event["sequence_id"], []).append(event)
    kinds = {sid: [e["event"] for e in found] for sid, found in events.items()}
    assert kinds == {
        "take0": ["sequence_start", "sequence_done"],
        "take1": ["sequence_start", "sequence_retry", "sequence_start", "sequence_done"],
        "broken": ["sequence_start", "sequence_failed"],
    }, kinds
    done = events["take1"][-1]
    assert (done["attempt"], done["frames"]) == ("2", "2") and float(done["seconds"]) > 0
    retry = events["take1"][1]
    assert (retry["attempt"], retry["kind"]) == ("1", "actor_lost") and float(retry["retry_in_s"]) > 0
    failed = events["broken"][-1]
    assert failed["kind"] == "input" and "a.png" in failed["error"]
    progress = [line for line in text.splitlines() if "pipeline.progress: run logged: " in line]
    assert progress, text[-3000:]
    assert "0/3 sequences" in progress[0] and "/6 frames" in progress[0]  # the total is known before any commit
    assert "2/3 sequences (1 failed, 0 running), 4/4 frames" in progress[-1]


@pytest.mark.slow
def test_status_tells_a_live_run_from_a_dead_driver_then_resume_takes_over(
    ray_cluster, tiny_checkpoint, tmp_path, capsys
):
    spec = make_spec(
        _inputs(tmp_path / "in", 4), tmp_path / "out", tiny_checkpoint, run_id="watched",
        resources__max_in_flight_per_actor=1, driver__heartbeat_s=0.5, driver__lease_expiry_s=2.0,
    )
    driver = _start_driver(ray_cluster, tmp_path, spec, "--log-format", "json", faults=FaultPlan(delay_s=1.5))
    try:
        live = _wait_for("a committed sequence", lambda: (s := run_status(spec.run_uri)).done >= 1 and s, driver)
        live = _wait_for(
            "a sequence in flight", lambda: (s := run_status(spec.run_uri)).running_sequences and s, driver
        )
        assert live.status == "running" and live.driver["state"] == "running"
        assert (live.driver["pid"], live.driver["host"]) == (driver.pid, os.uname().nodename)
        flight = live.running_sequences[0]
        assert flight["attempt"] == 1 and flight["started_at"] and flight["sequence_id"].startswith("take")
        assert live.running == len(live.running_sequences) and live.done + live.running + live.pending == 4
        assert live.elapsed_s > 1.5 and 0 < live.frames_per_s < 1000  # real numbers, not 0.0
        driver.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        driver.wait()
    finally:
        driver.kill()
    logged = [json.loads(line) for line in (tmp_path / "driver.log").read_text().splitlines() if line[:1] == "{"]
    done = [line for line in logged if line.get("event") == "sequence_done"]  # --log-format json: objects
    assert len(done) >= live.done and all(line["frames"] == 2 and line["level"] == "INFO" for line in done)
    dead = _wait_for("a dead driver", lambda: (s := run_status(spec.run_uri)).driver["state"] == "dead" and s)
    assert time.monotonic() - killed <= spec.driver.lease_expiry_s + 1.0
    assert dead.status == "incomplete" and dead.running_sequences == [] and dead.elapsed_s >= live.elapsed_s - 1
    assert main(["status", spec.run_uri]) == 1
    err = capsys.readouterr().err
    assert "is dead" in err and f"zipmap-pipeline resume {spec.run_uri}" in err

    resumed = resume_job(spec.run_uri)  # the dead driver ran on this host: no need to wait for expiry
    assert (resumed.done, resumed.failed) == (4, 0)
    assert resumed.elapsed_s > dead.elapsed_s  # the killed session's working time is kept
    final = run_status(spec.run_uri)
    assert final.driver["state"] == "finished" and final.status == "succeeded"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_driver_exits_3_naming_the_holder_and_nothing_is_lost(
    where, ray_cluster, tiny_checkpoint, tmp_path, capsys
):
    storage, extra = StorageSpec(), {}
    server = None
    if where == "s3":
        server = LocalS3().start()
        server.create_bucket("results")
        storage, extra = StorageSpec(endpoint_url=server.endpoint_url), {"storage__endpoint_url": server.endpoint_url}
    try:
        output = "s3://results/recon" if where == "s3" else tmp_path / "out"
        spec = make_spec(
            _inputs(tmp_path / "in", 4), output, tiny_checkpoint, run_id="contested",
            resources__max_in_flight_per_actor=1, **extra,
        )
        first = _start_driver(ray_cluster, tmp_path, spec, faults=FaultPlan(delay_s=1.0))
        _wait_for("a committed sequence", lambda: run_status(spec.run_uri, storage=storage).done >= 1, first)
        job = tmp_path / f"job-{spec.run_id}.json"
        store_args = ["--endpoint-url", server.endpoint_url] if server else []
        assert main(["resume", spec.run_uri, "--no-progress", *store_args]) == 3
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and f"host {os.uname().nodename}" in err and "since " in err, err
        assert main(["run", str(job), "--no-progress"]) == 3
        assert "being run by another driver" in capsys.readouterr().err
        out, _ = first.communicate(timeout=180)
        assert first.returncode == 0, (tmp_path / "driver.log").read_text()[-3000:]
        assert json.loads(out)["done"] == 4
        outputs = read_outputs(spec.run_uri, storage)
        rows = outputs.frames.select(["sequence_id", "frame_index"]).to_pylist()
        assert sorted((r["sequence_id"], r["frame_index"]) for r in rows) == [
            (f"take{i}", f) for i in range(4) for f in range(2)
        ]
        attempts = {r["sequence_id"]: r["attempts"] for r in outputs.manifest.to_pylist()}
        assert attempts == {f"take{i}": 1 for i in range(4)}
        for i in range(4):
            assert len(outputs.point_cloud(f"take{i}")) > 0
    finally:
        if server is not None:
            server.stop()


def test_decode_tasks_that_cannot_be_scheduled_stop_the_run_with_the_reason(
    ray_cluster, tiny_checkpoint, tmp_path, capsys
):
    """The actor starts, but no node has the CPUs a decode task asks for: exit 3 within the timeout."""
    spec = make_spec(
        _inputs(tmp_path / "in", 1), tmp_path / "out", tiny_checkpoint, run_id="starved",
        resources__decode_cpus=64, resources__progress_timeout_s=3,
    )
    path = tmp_path / "job.json"
    path.write_text(spec.to_json())
    begin = time.monotonic()
    assert main(["run", str(path), "--no-progress"]) == 3
    assert time.monotonic() - begin < 60
    err = capsys.readouterr().err
    assert "no progress for" in err and "resources.progress_timeout_s" in err, err
    assert "a decode task for CPU 64" in err and "the cluster has {CPU" in err, err
    assert run_status(spec.run_uri).driver["state"] == "stopped"


def test_actors_that_cannot_be_scheduled_stop_the_run_with_the_resources(
    ray_cluster, tiny_checkpoint, tmp_path, capsys
):
    spec = make_spec(
        _inputs(tmp_path / "in", 1), tmp_path / "out", tiny_checkpoint, run_id="unplaced",
        resources__custom_resources="{nowhere: 1}", resources__actor_start_timeout_s=3,
    )
    path = tmp_path / "job.json"
    path.write_text(spec.to_json())
    assert main(["run", str(path), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "no model actor started within 3s" in err and "ask for {CPU 1, nowhere 1} each" in err, err

