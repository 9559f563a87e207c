"""The run lease on local disk and on S3 (moto over HTTP): one holder, expiry, take-over, loss."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from pipeline.layout import RunLayout
from pipeline.lease import HOST, LeaseHeldError, LeaseLostError, RunLease, read_lease
from pipeline.spec import DriverSpec, StorageSpec
from pipeline.storage import Store

pytestmark = pytest.mark.timeout(120)
FAST = DriverSpec(heartbeat_s=0.1, lease_expiry_s=0.5)


@pytest.fixture(scope="module")
def s3(local_s3):
    local_s3.create_bucket("leases")
    return local_s3


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path):
    """(store, layout) of a fresh run folder on local disk or on moto."""
    if request.param == "local":
        uri, storage = str(tmp_path / "run"), StorageSpec()
    else:
        s3 = request.getfixturevalue("s3")
        uri, storage = f"s3://leases/{request.node.name.replace('[', '-').rstrip(']')}", StorageSpec(
            endpoint_url=s3.endpoint_url
        )
    return Store(uri, storage), RunLayout(uri)


def _lease(run, driver: DriverSpec = FAST) -> RunLease:
    store, layout = run
    return RunLease(store, layout, driver, "r1")


def test_of_two_drivers_starting_together_exactly_one_gets_the_run(run):
    leases = [_lease(run) for _ in range(4)]
    barrier, outcomes = threading.Barrier(len(leases)), []

    def take(lease):
        barrier.wait()
        try:
            lease.acquire()
            outcomes.append("held")
        except LeaseHeldError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert outcomes.count("held") == 1, outcomes
        refused = [o for o in outcomes if o != "held"]
        assert all(f"host {HOST}, pid {os.getpid()}, since " in o for o in refused), refused
        assert read_lease(*run).generation == 1
    finally:
        for lease in leases:
            lease.release({})


def test_a_released_run_is_taken_at_once_and_keeps_its_progress(run):
    first = _lease(run)
    assert first.acquire() is None
    first.release({"elapsed_s": 12.5})
    second = _lease(run)
    previous = second.acquire()
    try:
        assert (previous.state, previous.progress, second.generation) == ("released", {"elapsed_s": 12.5}, 2)
        store, layout = run
        names = sorted(e["name"].rsplit("/", 1)[-1] for e in store.ls(layout.leases))
        assert names == ["0000000002.json"]  # older generations are removed
    finally:
        second.release({})


def test_a_silent_driver_expires_then_loses_the_run(run):
    hung = _lease(run)
    hung.acquire()
    hung._stop.set()  # its heartbeat stops, as if the driver hung
    hung._thread.join()
    with pytest.raises(LeaseHeldError, match="heartbeat"):
        _lease(run).acquire()
    time.sleep(FAST.lease_expiry_s + 0.2)
    assert not read_lease(*run).holder_alive()
    taker = _lease(run)
    try:
        assert taker.acquire().generation == 1 and taker.generation == 2
        hung.beat()  # it wakes up: its next heartbeat finds the newer generation
        with pytest.raises(LeaseLostError, match="taken over"):
            hung.check()
        assert read_lease(*run).data["driver_id"] == taker._id
    finally:
        taker.release({})


def test_the_heartbeat_renews_and_publishes_progress(run):
    lease = _lease(run)
    lease.acquire()
    try:
        lease.publish({"done": 3})
        time.sleep(FAST.lease_expiry_s * 2)  # longer than the expiry: only renewals keep it alive
        current = read_lease(*run)
        assert current.holder_alive() and current.progress == {"done": 3} and current.age() < FAST.lease_expiry_s
        lease.check()
    finally:
        lease.release({"done": 4})
    assert read_lease(*run).state == "released"


def test_a_change_of_the_sequences_in_flight_is_written_before_the_heartbeat_is_due(run):
    """Sequences shorter than a heartbeat must still show up in `status` while they run."""
    lease = _lease(run, DriverSpec(heartbeat_s=30.0, lease_expiry_s=90.0))
    lease.acquire()
    try:
        for sid in ("a", "b", "c"):
            lease.publish({"running_sequences": [{"sequence_id": sid, "attempt": 1, "started_at": "now"}]})
            deadline = time.monotonic() + 5.0
            while read_lease(*run).progress.get("running_sequences", [{}])[0].get("sequence_id") != sid:
                assert time.monotonic() < deadline, f"{sid} in flight was not written within 5 s"
                time.sleep(0.05)
        lease.publish({"running_sequences": [{"sequence_id": "c", "attempt": 1, "started_at": "now"}], "done": 2})
        time.sleep(1.0)  # the same sequences in flight: no early write, the heartbeat carries it later
        assert "done" not in read_lease(*run).progress
    finally:
        lease.release({"done": 3})
    assert read_lease(*run).progress == {"done": 3}


def test_a_dead_driver_on_this_host_is_taken_over_at_once(run):
    store, layout = run
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()
    holder = {"host": HOST, "pid": dead.pid, "renewed_unix": now, "expiry_s": 3600, "state": "running"}
    store.create_exclusive(layout.lease(7), json.dumps(holder).encode())
    assert not read_lease(store, layout).holder_alive()
    lease = _lease(run, DriverSpec())
    try:
        assert lease.acquire().generation == 7 and lease.generation == 8
    finally:
        lease.release({})


def test_create_exclusive_refuses_an_existing_file(run):
    store, layout = run
    store.create_exclusive(layout.lease(1), b"first")
    with pytest.raises(FileExistsError):
        store.create_exclusive(layout.lease(1), b"second")
    assert store.read_bytes(layout.lease(1)) == b"first"
