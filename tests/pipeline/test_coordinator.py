"""The coordinator's loop on the benchmark's fake executor (no Ray, no model): lease loss, a run
that makes no progress, and statistics over several sessions."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import time
from pathlib import Path

import pytest

from pipeline.coordinator import Coordinator
from pipeline.errors import InfrastructureError
from pipeline.layout import RunLayout
from pipeline.lease import LeaseLostError, read_lease
from pipeline.manifest import read_manifest
from pipeline.spec import load_spec
from pipeline.storage import Store

pytestmark = pytest.mark.timeout(60)
BENCH = Path(__file__).resolve().parents[2] / "bench" / "coordinator_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("coordinator_scale", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _spec(tmp_path: Path, count: int, **overrides):
    manifest = tmp_path / "input.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sequence_id", "uri"])
        writer.writerows([f"s{i}", f"/nowhere/s{i}.mp4"] for i in range(count))
    data = {
        "input": {"manifest": str(manifest)},
        "output": str(tmp_path / "out"),
        "run_id": "fake",
        "model": {"preset": "tiny", "allow_random_weights": True},
    }
    return load_spec(data, [f"{k}={v}" for k, v in overrides.items()])


def _run(spec, fake):
    return Coordinator(spec, progress=False, executor=lambda s: contextlib.nullcontext(fake)).run()


def test_a_driver_that_loses_the_run_stops_without_writing_to_it(tmp_path):
    spec = _spec(tmp_path, 10)
    run = Path(spec.run_uri)
    coordinator = Coordinator(spec, progress=False)

    class TakenOver(bench.FakeExecutor):
        def get(self, ref):
            result = super().get(ref)
            if self.results == 3:  # another driver takes the run over; our heartbeat notices
                (run / "_staging" / "theirs").mkdir(parents=True)
                coordinator.store.create_exclusive(coordinator.layout.lease(2), b'{"host": "other", "pid": 1}')
                coordinator._lease.beat()
            return result

    coordinator._open_executor = lambda s: contextlib.nullcontext(TakenOver())
    with pytest.raises(LeaseLostError, match="taken over by host other, pid 1"):
        coordinator.run()
    assert len(list((run / "_commits").glob("*.json"))) == 2  # the third result was not committed
    assert (run / "_staging" / "theirs").is_dir()  # the new holder's files are left alone
    assert not (run / "summary.json").exists()
    assert read_lease(coordinator.store, coordinator.layout).generation == 2


def test_a_run_that_makes_no_progress_stops_and_says_why(tmp_path):
    class Stuck(bench.FakeExecutor):
        def wait(self, refs, timeout):
            return [r for r in refs if r.kind == "ready"]  # actors start; no sequence ever finishes

    spec = _spec(tmp_path, 3, **{"resources.progress_timeout_s": 0.5})
    with pytest.raises(InfrastructureError, match=r"no progress for \ds .*3 sequence\(s\) in flight.*fake executor"):
        _run(spec, Stuck())
    assert read_lease(Store(spec.run_uri), RunLayout(spec.run_uri)).state == "released"


def test_working_time_adds_up_over_sessions_and_a_finished_run_is_left_alone(tmp_path):
    spec = _spec(tmp_path, 40)
    summary_path = Path(spec.run_uri) / "summary.json"
    with contextlib.suppress(bench._Enough):
        _run(spec, bench.FakeExecutor(stop_after=10))  # the first session stops early
    first = json.loads(summary_path.read_text())
    assert first["status"] == "incomplete" and first["done"] >= 10 and first["elapsed_s"] > 0
    second = _run(spec, bench.FakeExecutor())
    assert second.done == 40 and second.elapsed_s > first["elapsed_s"]
    assert second.frames_per_s == pytest.approx(second.frames / second.elapsed_s, rel=0.01)  # elapsed_s is rounded
    stored = summary_path.read_text()
    third = _run(spec, bench.FakeExecutor())  # nothing to do
    assert summary_path.read_text() == stored and third.elapsed_s == second.elapsed_s


def test_a_session_after_a_killed_one_brings_manifest_and_summary_up_to_date(tmp_path):
    """The killed session committed a sequence but wrote neither manifest nor summary; the next
    one has nothing left to run, yet must not leave the older session's summary in place."""
    fast = {"driver.heartbeat_s": 0.1, "driver.lease_expiry_s": 0.3}
    spec = _spec(tmp_path, 4, **fast)
    run, layout = Path(spec.run_uri), RunLayout(spec.run_uri)
    assert _run(spec, bench.FakeExecutor()).done == 4
    grown = _spec(tmp_path, 5, **fast)  # the input gains a sequence; a session runs it and is killed
    killed = Coordinator(grown, progress=False, executor=lambda s: contextlib.nullcontext(bench.FakeExecutor()))

    def die():  # as SIGKILL: the heartbeat stops, nothing more is written
        killed._lease._stop.set()
        killed._lease._thread.join()
        raise KeyboardInterrupt

    killed._finish = die
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    assert (run / "_commits" / "s4.json").exists() and json.loads((run / "summary.json").read_text())["done"] == 4
    assert read_lease(Store(spec.run_uri), layout).state == "running"  # a dead driver's lease
    time.sleep(0.4)  # it expires
    after = _run(grown, bench.FakeExecutor())
    assert after.done == 5 and json.loads((run / "summary.json").read_text())["done"] == 5
    assert read_manifest(Store(spec.run_uri), layout)["s4"].status == "done"
    assert not list((run / "_commit_intents").glob("*.json"))  # the compact record covers s4 now
