"""S3 faults between the pipeline and a real endpoint: moto's server over HTTP, behind
pipeline.testing.s3proxy.FaultProxy. Throttling, server errors, stalls, connections cut in the
middle of an upload and answers lost after the request took effect, during the actors' writes
and during the driver's commits.

Each run either completes with every output intact or fails loudly (failed sequences, exit code 1,
an InfrastructureError), and is never torn: a sequence with a marker has all its outputs, with the
sizes it was committed with, and a sequence without one has none left.
"""

from __future__ import annotations

import time

import pyarrow.dataset as ds
import pytest
import s3fs

from pipeline import read_outputs, run_job
from pipeline.api import run_status
from pipeline.commit_record import read_commits
from pipeline.errors import InfrastructureError
from pipeline.layout import FRAMES, POINTS, RunLayout
from pipeline.spec import StorageSpec
from pipeline.storage import Store
from pipeline.testing.s3proxy import Fault, FaultProxy

from .conftest import make_spec, parse_ply, write_sequence

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def proxy(local_s3, tiny_checkpoint, tmp_path_factory):
    """A fault proxy in front of the session's moto server, with inputs (a..e, 2 frames each)
    and the checkpoint in bucket `faults-capture`, uploaded around the proxy. (Buckets of their
    own: moto's servers in one process share their buckets.)"""
    local_s3.create_bucket("faults-capture")
    local_s3.create_bucket("faults-results")
    folder = tmp_path_factory.mktemp("s3faults")
    for i, sid in enumerate("abcde"):
        write_sequence(folder / sid, 2, seed=80 + i)
    fs = s3fs.S3FileSystem(endpoint_url=local_s3.endpoint_url)
    fs.put(str(folder) + "/", "faults-capture/takes/", recursive=True)
    fs.put(str(tiny_checkpoint), "faults-capture/models/tiny.pt")
    with FaultProxy(local_s3.endpoint_url) as server:
        yield server


def _spec(proxy: FaultProxy, run_id: str, **fields):
    return make_spec(
        "s3://faults-capture/takes",
        "s3://faults-results/recon",
        "s3://faults-capture/models/tiny.pt",
        run_id=run_id,
        storage__endpoint_url=proxy.endpoint_url,
        storage__region="us-east-1",
        storage__read_timeout_s=2,  # so that a stalled request is retried within seconds
        storage__connect_timeout_s=2,
        storage__max_attempts=3,
        point_cloud__conf_threshold=0.0,
        **fields,
    )


def _assert_never_torn(spec, storage: StorageSpec) -> set[str]:
    """Every marker's outputs are complete and readable; outputs exist only for sequences with a
    marker (each exactly once). Returns the committed sequences."""
    store, layout = Store(spec.run_uri, storage), RunLayout(spec.run_uri)
    commits = read_commits(store, layout, verify=True)
    assert commits.torn == {} and commits.orphans == set(), (commits.torn, commits.orphans)
    out = read_outputs(spec.run_uri, storage)
    for sid, record in out.committed.items():
        assert record.output_bytes == {
            kind: store.size(layout.final(sid, kind)) for kind in (FRAMES, POINTS)
        }, sid
        assert len(parse_ply(store.read_bytes(layout.final(sid, POINTS)))["x"]) == record.num_points
    frames = ds.dataset(store.path(layout.dataset_dir(FRAMES)), filesystem=store.fs, partitioning="hive").to_table()
    rows = sorted(zip(frames.column("sequence_id").to_pylist(), frames.column("frame_index").to_pylist()))
    assert rows == sorted((sid, i) for sid in out.committed for i in range(2))  # each frame once, nothing else
    assert store.list_files(layout.staging_root) == {}
    return set(out.committed)


@pytest.mark.slow
def test_transient_s3_faults_are_retried_and_the_run_completes(ray_cluster, proxy):
    proxy.clear()
    faults = [
        Fault("slowdown", method="PUT", path=r"/faults-results/recon/flaky/_staging/", times=3),  # actors' writes
        Fault("cut", method="PUT", path=r"/_staging/.*points\.ply", copy=False, times=1),  # upload cut halfway
        Fault("error", method="PUT", path=r"/faults-results/recon/flaky/", copy=True, times=2),  # commit moves
        Fault("stall", method="PUT", path=r"/_commit_intents/", times=1, stall_s=6),  # a request hangs
        Fault("lost_response", method="PUT", path=r"/_commits/b\.json", times=1),  # marker stored, answer lost
        Fault("slowdown", method="HEAD", path=r"/faults-results/recon/flaky/_commits/", times=2),  # marker checks
        Fault("error", method="DELETE", path=r"/faults-results/recon/flaky/_staging/", times=1),
        Fault("lost_response", method="PUT", path=r"/manifest\.parquet", times=1),
    ]
    proxy.add(*faults)
    spec = _spec(proxy, "flaky")
    start = time.monotonic()
    summary = run_job(spec)
    elapsed = time.monotonic() - start
    proxy.clear()
    assert (summary.done, summary.failed, summary.exit_code) == (5, 0, 0), summary
    assert all(f.seen > f.after for f in faults), [(f.action, f.path, f.seen) for f in faults]
    assert elapsed < 120, "a stalled request must time out and be retried in bounded time"
    storage = StorageSpec(endpoint_url=proxy.endpoint_url, region="us-east-1")
    assert _assert_never_torn(spec, storage) == set("abcde")
    assert run_status(spec.run_uri, storage=storage).status == "succeeded"


@pytest.mark.slow
def test_persistent_s3_faults_fail_loudly_and_tear_nothing(ray_cluster, proxy):
    """a: every commit move of its frames fails; b: its marker can never be written; c: its
    marker is written but every answer is lost; d: its staged upload is cut every time; e: fine."""
    proxy.clear()
    run = r"/faults-results/recon/outage/"
    proxy.add(
        Fault("error", method="PUT", path=run + r"frames/sequence_id(=|%3D)a/", copy=True, times=None),
        Fault("error", method="PUT", path=run + r"_commits/b\.json", times=None),
        Fault("lost_response", method="PUT", path=run + r"_commits/c\.json", times=None),
        Fault("cut", method="PUT", path=run + r"_staging/d/", times=None),
    )
    spec = _spec(proxy, "outage", retry__max_attempts=2)
    summary = run_job(spec, raise_on_failure=False)
    proxy.clear()
    assert (summary.status, summary.exit_code) == ("partial", 1), summary
    failures = {f["sequence_id"]: f for f in summary.failures}
    assert set(failures) == {"a", "b", "d"}
    assert "commit failed" in failures["a"]["error"] and "commit failed" in failures["b"]["error"]
    assert all(f["attempts"] == 2 for f in failures.values())
    storage = StorageSpec(endpoint_url=proxy.endpoint_url, region="us-east-1")
    assert _assert_never_torn(spec, storage) == {"c", "e"}  # c's marker landed: it is committed
    fs = Store(spec.run_uri, storage)
    layout = RunLayout(spec.run_uri)
    for sid in "abd":  # the failed commits removed what they had moved
        assert not fs.exists(layout.commit_marker(sid)) and not fs.exists(layout.final(sid, POINTS))
    status = run_status(spec.run_uri, storage=storage, verify=True)
    assert (status.done, status.failed, status.torn) == (2, 3, [])


def test_an_unreachable_run_store_stops_the_run(proxy):
    """Every request to the run's bucket fails: the run stops with an InfrastructureError (exit 3)
    after the configured attempts, before any work starts."""
    proxy.clear()
    proxy.add(Fault("error", path=r"^/faults-results/", times=None))
    try:
        start = time.monotonic()
        with pytest.raises(InfrastructureError, match="cannot use s3://faults-results/recon/down: .*Internal"):
            run_job(_spec(proxy, "down"))
        assert time.monotonic() - start < 60
    finally:
        proxy.clear()
