"""The commit protocol and the compact commit record, on a local disk and on moto's S3 over HTTP (no Ray).

A "crash" here is `Crash`, a BaseException raised by a real store before its k-th change: nothing
in the code under test catches it, so the run folder is left exactly as a process killed at that
moment would leave it. A second, fresh store then looks at the run as the next driver would.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.api import run_status
from pipeline.cli import main
from pipeline.commit import Committer, clean_uncommitted, remove_outputs
from pipeline.commit_record import read_commits
from pipeline.layout import FRAMES, POINTS, RunLayout
from pipeline.manifest import SequenceRecord, write_manifest
from pipeline.outputs import StagedOutputs
from pipeline.reader import read_outputs
from pipeline.spec import StorageSpec
from pipeline.storage import Store

pytestmark = pytest.mark.timeout(240)


class Crash(BaseException):
    """The process dies here."""


class CrashingStore(Store):
    """A real store that dies right before its `at`-th change (a write, a move, a delete)."""

    def __init__(self, uri: str, storage: StorageSpec | None = None, *, at: int | None):
        super().__init__(uri, storage)
        self.at = at
        self.changes: list[str] = []

    def _change(self, what: str) -> None:
        self.changes.append(what)
        if len(self.changes) == self.at:
            raise Crash(what)

    def write_bytes(self, uri, data, **kwargs):
        self._change(f"write {uri}")
        super().write_bytes(uri, data, **kwargs)

    def move(self, src_uri, dst_uri):
        self._change(f"move {dst_uri}")
        if self.local:
            super().move(src_uri, dst_uri)
            return
        self.fs.copy(self.path(src_uri), self.path(dst_uri))  # on S3 a move is two requests: die between them too
        self._change(f"delete {src_uri}")
        self.fs.rm_file(self.path(src_uri))

    def delete(self, uri, **kwargs):
        self._change(f"delete {uri}")
        super().delete(uri, **kwargs)

    def delete_files(self, uris):
        self._change(f"delete {uris}")
        super().delete_files(uris)


def _stage(store: Store, layout: RunLayout, sid: str, attempt: str, content: bytes = b"x") -> StagedOutputs:
    """A frames table of one row and a 'point cloud' holding `content`, in the attempt's staging folder."""
    buf = io.BytesIO()
    pq.write_table(pa.table({"sequence_id": [sid], "frame_index": pa.array([0], pa.int32())}), buf)
    store.write_bytes(layout.staged(sid, attempt, FRAMES), buf.getvalue())
    store.write_bytes(layout.staged(sid, attempt, POINTS), content)
    return StagedOutputs(
        files={FRAMES: layout.staged(sid, attempt, FRAMES), POINTS: layout.staged(sid, attempt, POINTS)},
        num_frames=1,
        num_points=0,
    )


def _commit(committer: Committer, sid: str, attempt: str, content: bytes = b"x") -> SequenceRecord:
    staged = _stage(committer.store, committer.layout, sid, attempt, content)
    return SequenceRecord.from_marker(committer.commit(sid, attempt, staged, {"attempt": 1}))


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path) -> tuple[str, StorageSpec | None]:
    """A fresh run folder: on the local disk, or in a bucket of the session's moto server."""
    if request.param == "local":
        return str(tmp_path / "run"), None
    s3 = request.getfixturevalue("local_s3")
    bucket = f"commit-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(bucket)
    return f"s3://{bucket}/runs/r1", StorageSpec(endpoint_url=s3.endpoint_url, region="us-east-1")


def _hive_rows(store: Store, layout: RunLayout) -> list[str]:
    """sequence_id of every row of the frames folder read as one hive dataset, as users read it."""
    path = store.path(layout.dataset_dir(FRAMES))
    if not store.exists(layout.dataset_dir(FRAMES)):
        return []
    table = ds.dataset(path, filesystem=store.fs, partitioning="hive").to_table()
    return sorted(table.column("sequence_id").to_pylist())


def test_commit_is_atomic_and_idempotent(tmp_path):
    store, layout = Store(str(tmp_path / "run")), RunLayout(str(tmp_path / "run"))
    committer = Committer(store, layout)
    first = _commit(committer, "a", "att1", b"one")
    assert store.read_bytes(layout.final("a", POINTS)) == b"one"
    assert first.output_bytes == {FRAMES: store.size(layout.final("a", FRAMES)), POINTS: 3}
    assert not store.exists(layout.staging("a", "att1"))
    # a duplicate attempt of a committed sequence changes nothing
    again = _commit(committer, "a", "att2", b"two")
    assert again.attempt_id == "att1" == first.attempt_id
    assert store.read_bytes(layout.final("a", POINTS)) == b"one"
    assert not store.exists(layout.staging("a", "att2"))
    assert set(read_commits(store, layout, verify=True).committed) == {"a"}


def test_outputs_without_marker_are_never_results(tmp_path):
    run = str(tmp_path / "run")
    store, layout = Store(run), RunLayout(run)
    _commit(Committer(store, layout), "good", "g1")
    # a commit that died after moving files but before its marker (by a writer that kept no intent)
    staged = _stage(store, layout, "torn", "t1")
    for kind, uri in staged.files.items():
        store.move(uri, layout.final("torn", kind))
    _stage(store, layout, "torn", "t2")  # and a staged attempt that never finished
    # and the temporary files of atomic writes killed before their rename
    for uri in (layout.commit_marker("torn"), layout.manifest, layout.intent("torn")):
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        with open(uri + ".tmp-0badf00d", "wb") as f:
            f.write(b"{")
    out = read_outputs(run)
    assert set(out.committed) == {"good"} and out.frames.column("sequence_id").to_pylist() == ["good"]
    commits = read_commits(store, layout, verify=True)
    assert commits.orphans == {"torn"} and commits.torn == {}
    Committer(store, layout).recover(commits)
    assert not store.exists(layout.final("torn", POINTS)) and not store.exists(layout.staging_root)
    assert sorted(os.listdir(layout.commits)) == ["good.json"]
    assert not any(".tmp-" in name for folder in (run, layout.intents) for name in os.listdir(folder))
    assert _hive_rows(store, layout) == ["good"]


def test_a_crash_at_any_step_of_a_commit_leaves_nothing_or_everything(run):
    """The commit protocol's guarantee, step by step: wherever the committing process dies, a
    reader never sees a marker without complete outputs, and the next session commits the
    sequence exactly once. (It fails if the marker is written before the outputs are moved.)"""
    base, storage = run
    steps = None
    at = 1
    while True:
        uri = f"{base}-{at}"
        store, layout = Store(uri, storage), RunLayout(uri)
        first = Committer(store, layout)
        done = _commit(first, "a", "a1", b"A")  # a committed neighbour
        first.compact([done])
        staged = _stage(store, layout, "b", "b1", b"B")
        crashing = CrashingStore(uri, storage, at=at)
        try:
            Committer(crashing, layout).commit("b", "b1", staged, {"attempt": 1})
            crashed = False
        except Crash:
            crashed = True

        # what a reader sees right after the crash: b is either absent or complete
        reader = Store(uri, storage)
        commits = read_commits(reader, layout, verify=True)
        assert commits.torn == {}, (at, crashing.changes)
        assert set(commits.committed) <= {"a", "b"} and "a" in commits.committed
        status = run_status(uri, storage=storage)
        assert status.done == len(commits.committed), (at, crashing.changes)  # the compact record agrees
        if "b" in commits.committed:
            assert reader.read_bytes(layout.final("b", POINTS)) == b"B"

        # the next session recovers, redoes b if it must, and compacts
        store = Store(uri, storage)
        nxt = Committer(store, layout)
        nxt.recover(commits)
        if "b" not in commits.committed:
            commits.committed["b"] = _commit(nxt, "b", "b2", b"B2")
        nxt.compact(list(commits.committed.values()))

        out = read_outputs(uri, storage)
        assert set(out.committed) == {"a", "b"} and out.torn == {}
        assert out.frames.column("sequence_id").to_pylist() == ["a", "b"]
        assert store.read_bytes(layout.final("b", POINTS)) in (b"B", b"B2")
        assert _hive_rows(store, layout) == ["a", "b"], (at, crashing.changes)  # no leftover partition
        assert store.list_files(layout.staging_root) == {}  # nothing staged is left
        assert store.list_names(layout.intents) == []
        assert read_commits(store, layout).markers_read == 0
        if not crashed:
            steps = crashing.changes
            break
        at += 1
    # the intent, one move per output, the marker and the staging folder: every step was hit
    assert len(steps) >= 5 and at == len(steps) + 1, steps


def test_cleanup_never_removes_a_sequence_committed_meanwhile(tmp_path):
    """#20 item 2: a second driver reads the run while the first is committing `a` (outputs moved,
    marker not yet written), then cleans up: a's outputs must survive, as it is committed by then."""
    run = str(tmp_path / "run")
    layout = RunLayout(run)
    seen = {}

    class FirstDriversStore(Store):
        def write_bytes(self, uri, data, **kwargs):
            if uri == layout.commit_marker("a"):  # the second driver starts right now
                seen["commits"] = read_commits(Store(run), layout, verify=True)
            super().write_bytes(uri, data, **kwargs)

    _commit(Committer(FirstDriversStore(run), layout), "a", "a1", b"A")
    assert seen["commits"].orphans == {"a"} and not seen["commits"].committed  # what the second driver saw
    Committer(Store(run), layout).recover(seen["commits"])  # its cleanup, after a was committed

    out = read_outputs(run)
    assert set(out.committed) == {"a"} and out.torn == {}
    assert out.frames.column("sequence_id").to_pylist() == ["a"]
    assert out.point_cloud is not None and Store(run).read_bytes(layout.final("a", POINTS)) == b"A"
    # the same with the older entry point: a stale list of committed sequences
    clean_uncommitted(Store(run), layout, committed=set())
    assert remove_outputs(Store(run), layout, "a") is False
    assert set(read_outputs(run).committed) == {"a"}


def test_status_reads_no_marker_once_the_manifest_covers_them(run):
    uri, storage = run
    store, layout = Store(uri, storage), RunLayout(uri)
    committer = Committer(store, layout)
    records = [_commit(committer, f"s{i}", f"a{i}") for i in range(5)]
    failed = SequenceRecord(sequence_id="bad", status="failed", attempts=3, error="InputError: unreadable")
    committer.compact([*records, failed])
    commits = read_commits(store, layout)
    assert commits.markers_read == 0 and set(commits.committed) == {f"s{i}" for i in range(5)}
    assert store.list_names(layout.intents) == []
    # a commit after the last manifest write: its intent makes readers ask its marker
    _commit(committer, "s5", "a5")
    commits = read_commits(store, layout)
    assert commits.markers_read == 1 and len(commits.committed) == 6
    summary = run_status(uri, storage=storage)
    assert (summary.done, summary.failed, summary.status) == (6, 1, "partial")
    assert summary.model_dump() == run_status(uri, storage=storage, verify=True).model_dump()


def test_commits_are_synced_before_the_manifest_that_records_them(tmp_path):
    """Intents and markers are written without an fsync each (atomic against a killed process, not
    yet against a power loss): one sync of the store must come after them and before the manifest
    vouches for them, and the manifest itself is synced as written."""
    run = str(tmp_path / "run")
    layout = RunLayout(run)
    events: list[tuple[str, bool]] = []

    class RecordingStore(Store):
        def write_bytes(self, uri, data, **kwargs):
            events.append((uri, kwargs.get("durable", True)))
            super().write_bytes(uri, data, **kwargs)

        def sync(self):
            events.append(("sync", True))
            super().sync()  # the real syncfs

    committer = Committer(RecordingStore(run), layout)
    records = [_commit(committer, sid, f"{sid}1") for sid in ("a", "b")]
    events.clear()  # the staged files (a worker's writes) are durable as written
    committer.compact(records)
    assert events == [("sync", True), (layout.manifest, True)]
    events.clear()
    _commit(committer, "c", "c1")
    assert (layout.intent("c"), False) in events and (layout.commit_marker("c"), False) in events
    assert ("sync", True) not in events  # the per-commit fsyncs are what this saves
    committer.compact([*records, SequenceRecord.from_marker(Store(run).read_json(layout.commit_marker("c")))])
    assert events[-2:] == [("sync", True), (layout.manifest, True)]
    assert set(read_commits(Store(run), layout, verify=True).committed) == {"a", "b", "c"}


def test_markers_win_over_the_manifest(tmp_path):
    run = str(tmp_path / "run")
    store, layout = Store(run), RunLayout(run)
    committer = Committer(store, layout)
    committer.compact([_commit(committer, sid, "x") for sid in ("a", "b")])
    os.unlink(layout.commit_marker("b"))  # withdrawn behind the committer's back
    # a marker the manifest does not know, written without an intent (an older writer)
    _commit(Committer(store, layout), "c", "y")
    os.unlink(layout.intent("c"))
    commits = read_commits(store, layout, verify=True)
    assert set(commits.committed) == {"a", "c"}
    records = commits.records()
    assert records["b"].status == "pending" and records["c"].status == "done"
    summary = run_status(run, verify=True)
    assert (summary.done, summary.pending) == (2, 1)


def test_runs_of_earlier_versions_are_read_from_their_markers(tmp_path):
    """A manifest without the committer's mark: the markers are listed, and those the manifest
    does not know as done are read."""
    run = str(tmp_path / "run")
    store, layout = Store(run), RunLayout(run)
    committer = Committer(store, layout)
    records = [_commit(committer, sid, "x") for sid in ("a", "b", "c")]
    for sid in ("a", "b", "c"):
        os.unlink(layout.intent(sid))
    write_manifest(store, layout, records[:2])  # as earlier versions wrote it
    commits = read_commits(store, layout)
    assert set(commits.committed) == {"a", "b", "c"} and commits.markers_read == 1


def test_missing_or_truncated_outputs_are_torn(tmp_path, capsys):
    run = str(tmp_path / "run")
    store, layout = Store(run), RunLayout(run)
    committer = Committer(store, layout)
    committer.compact([_commit(committer, sid, "x", b"12345") for sid in ("a", "b", "c")])
    with open(layout.final("b", POINTS), "wb") as f:
        f.write(b"12")
    store.delete(layout.final_owner("c", FRAMES))
    out = read_outputs(run)
    assert set(out.committed) == {"a"}
    assert out.torn == {"b": "committed, but points has 2 bytes, committed 5", "c": "committed, but frames missing"}
    assert run_status(run).done == 3  # the compact record alone does not look at outputs
    summary = run_status(run, verify=True)
    assert (summary.done, summary.pending, summary.status) == (1, 2, "incomplete")
    assert [t["sequence_id"] for t in summary.torn] == ["b", "c"]
    assert main(["status", run]) == 0 and json.loads(capsys.readouterr().out)["torn"] == []
    assert main(["status", run, "--verify"]) == 1
    assert json.loads(capsys.readouterr().out)["torn"] == summary.torn
    # the next session withdraws them: markers and what is left of their outputs go
    commits = read_commits(store, layout, verify=True)
    Committer(store, layout).recover(commits)
    assert not store.exists(layout.commit_marker("b")) and not store.exists(layout.final("b", POINTS))
    assert not store.exists(layout.final("c", POINTS))
    assert read_commits(store, layout, verify=True).torn == {}


def test_folder_outputs_commit_whole_and_are_never_called_torn(run):
    """Previews and exports are folders per sequence: committed with the sequence (moved over any
    leftover), not size-checked, removed with an uncommitted sequence, kept with a committed one."""
    uri, storage = run
    store, layout = Store(uri, storage), RunLayout(uri)
    committer = Committer(store, layout)
    folders = {"previews": ("trajectory.png", "stats.json"), "exports/colmap": ("sparse/0/cameras.bin",)}

    def stage_with_folders(sid: str, attempt: str) -> StagedOutputs:
        staged = _stage(store, layout, sid, attempt)
        for kind, names in folders.items():
            for name in names:
                store.write_bytes(f"{layout.staged(sid, attempt, kind)}/{name}", attempt.encode())
            staged.files[kind] = layout.staged(sid, attempt, kind)
        return staged

    store.write_bytes(f"{layout.final('a', 'previews')}/old.png", b"left by a crashed commit")
    marker = committer.commit("a", "a1", stage_with_folders("a", "a1"), {"attempt": 1})
    assert marker["outputs"]["previews"] == layout.final("a", "previews")
    assert set(marker["output_bytes"]) == {FRAMES, POINTS}  # sizes of the core outputs only
    assert sorted(store.list_files(layout.final("a", "previews"))) == ["stats.json", "trajectory.png"]
    assert store.read_bytes(f"{layout.final('a', 'exports/colmap')}/sparse/0/cameras.bin") == b"a1"
    # a commit that died after moving b's folders, before its marker: b's folders go, a's stay
    class DiesAtTheMarker(Store):
        def write_bytes(self, uri, data, **kwargs):
            if uri == layout.commit_marker("b"):
                raise Crash(uri)
            super().write_bytes(uri, data, **kwargs)

    crashing = Committer(DiesAtTheMarker(uri, storage), layout)
    with pytest.raises(Crash):
        crashing.commit("b", "b1", stage_with_folders("b", "b1"), {"attempt": 1})
    assert store.exists(layout.final("b", "exports/colmap"))
    commits = read_commits(Store(uri, storage), layout, verify=True)
    assert set(commits.committed) == {"a"} and commits.torn == {} and "b" in commits.orphans
    Committer(Store(uri, storage), layout).recover(commits)
    assert not store.exists(layout.final("b", "previews")) and not store.exists(layout.final("b", "exports/colmap"))
    assert store.exists(layout.final("a", "previews")) and store.exists(layout.final("a", "exports/colmap"))
    assert run_status(uri, storage=storage, verify=True).torn == []
