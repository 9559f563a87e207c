"""How long `status` and the start of a `resume` take to learn what a run committed, at 1k-100k
sequences, with the compact commit record against the previous way (one GET per commit marker),
both measured in the same run on the same run folder.

    python bench/commit_record_scale.py                          # 1k 10k 100k, local disk and moto
    python bench/commit_record_scale.py --sizes 1000 --stores local   # a quick check

A synthetic run folder is built for each size: N committed sequences (marker, a frames partition
and a PLY each; the output files are a few bytes, as only names and sizes are read), a manifest
written by the committer, and the intents of the last `--intents` commits (default 100: a driver
killed 10 s after its last manifest write, committing 10 sequences/s); each intent costs `status`
one marker GET, so its time grows with them (not with N).
On moto the objects are put into its in-process backend directly (setting up 300k objects over
HTTP would take longer than the measurement); everything measured goes over HTTP through s3fs.

Measured, per store and size (seconds, best of --repeat):
- status, before: the manifest, then a listing of `_commits/` and a GET of every marker
- status, now: `run_status` (manifest + intents + their markers)
- status --verify, now: also lists the markers and every output folder
- resume start, before: the markers as above, the manifest, and the cleanup listing
- resume start, now: `read_commits(verify=True)` and `Committer.recover` (cleanup)
The "before" code is the previous pipeline.commit/pipeline.api logic, kept here to compare.
`--old-limit N` skips the old way above N sequences (on moto a GET costs ~5-10 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.api import run_status  # noqa: E402
from pipeline.commit import Committer  # noqa: E402
from pipeline.commit_record import read_commits  # noqa: E402
from pipeline.layout import FRAMES, OUTPUT_KINDS, POINTS, RunLayout  # noqa: E402
from pipeline.manifest import RunSummary, SequenceRecord, read_manifest, write_manifest  # noqa: E402
from pipeline.spec import StorageSpec  # noqa: E402
from pipeline.storage import Store  # noqa: E402


def _marker(run_uri: str, layout: RunLayout, sid: str) -> dict:
    return {
        "sequence_id": sid,
        "attempt_id": "0123456789ab",
        "attempt": 1,
        "source_uri": f"s3://captures/{sid}",
        "num_frames": 32,
        "num_points": 123456,
        "outputs": {kind: layout.final(sid, kind) for kind in (FRAMES, POINTS)},
        "output_bytes": {FRAMES: 8, POINTS: 8},
        "timings": {"decode_s": 1.0, "infer_s": 2.0, "write_s": 0.5, "total_s": 4.0, "commit_s": 0.05},
        "worker": {"host": "node-1", "pid": 1234, "device": "cuda"},
        "committed_at": "2026-01-01T00:00:00+00:00",
    }


def _objects(run_uri: str, n: int, intents: int) -> tuple[dict[str, bytes], list[SequenceRecord]]:
    """Every object of a synthetic run of n committed sequences (URI -> bytes), and its records."""
    layout = RunLayout(run_uri)
    objects, records = {}, []
    for i in range(n):
        sid = f"seq{i:07d}"
        marker = _marker(run_uri, layout, sid)
        objects[layout.commit_marker(sid)] = json.dumps(marker, indent=2, sort_keys=True).encode()
        for kind in (FRAMES, POINTS):
            objects[layout.final(sid, kind)] = b"12345678"
        records.append(SequenceRecord.from_marker(marker))
    for record in records[-min(n, intents) :]:  # committed after the last manifest write
        objects[layout.intent(record.sequence_id)] = json.dumps({"sequence_id": record.sequence_id}).encode()
    return objects, records


def build_local(root: str, n: int, intents: int) -> str:
    run_uri = os.path.join(root, f"run-{n}")
    objects, records = _objects(run_uri, n, intents)
    for uri, data in objects.items():
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        with open(uri, "wb") as f:
            f.write(data)
    write_manifest(Store(run_uri), RunLayout(run_uri), records, covers_commits=True)
    return run_uri


def build_moto(bucket: str, n: int, intents: int, storage: StorageSpec) -> str:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    run_uri = f"s3://{bucket}/run-{n}"
    objects, records = _objects(run_uri, n, intents)
    for uri, data in objects.items():
        backend.put_object(bucket, uri[len(f"s3://{bucket}/") :], data)
    write_manifest(Store(run_uri, storage), RunLayout(run_uri), records, covers_commits=True)
    return run_uri


# -- the previous way (pipeline.commit.committed_sequences and its callers, before the commit record)


def _old_committed(store: Store, layout: RunLayout) -> dict[str, dict]:
    uris = [u for u in store.find(layout.commits) if u.endswith(".json")]
    return {m["sequence_id"]: m for m in map(json.loads, store.read_many(uris))}


def old_status(run_uri: str, storage: StorageSpec | None) -> RunSummary:
    store, layout = Store(run_uri, storage), RunLayout(run_uri)
    records = read_manifest(store, layout)
    for sid, marker in _old_committed(store, layout).items():
        records[sid] = SequenceRecord.from_marker(marker)
    done = sum(r.num_frames or 0 for r in records.values() if r.status == "done")
    return RunSummary.from_records("r", run_uri, list(records.values()), 1.0, done)


def old_resume_start(run_uri: str, storage: StorageSpec | None) -> int:
    store, layout = Store(run_uri, storage), RunLayout(run_uri)
    committed = _old_committed(store, layout)
    read_manifest(store, layout)
    for kind in OUTPUT_KINDS:  # the cleanup pass lists every output folder
        store.ls(layout.dataset_dir(kind))
    return len(committed)


def new_resume_start(run_uri: str, storage: StorageSpec | None) -> int:
    store, layout = Store(run_uri, storage), RunLayout(run_uri)
    commits = read_commits(store, layout, verify=True)
    Committer(store, layout).recover(commits)
    return len(commits.committed)


def _best(fn, repeat: int) -> tuple[tuple[float, float], object]:
    """Best wall time of `repeat` calls, and the CPU time of this process in that call (on a
    shared machine the CPU time is the steadier number; with moto it includes the server's threads)."""
    best, cpu, result = float("inf"), 0.0, None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, cpu = wall, time.process_time() - start_cpu
    return (best, cpu), result


def measure(run_uri: str, n: int, storage: StorageSpec | None, args) -> dict:
    row = {"n": n}

    def timed(key: str, fn):
        row[key], result = _best(fn, args.repeat)
        print(f"  {n} sequences, {key}: {row[key][0]:.3f} s ({row[key][1]:.3f} s CPU)", file=sys.stderr, flush=True)
        return result

    summary = timed("status_new", lambda: run_status(run_uri, storage=storage))
    assert summary.done == n, summary
    summary = timed("verify_new", lambda: run_status(run_uri, storage=storage, verify=True))
    assert summary.done == n and not summary.torn, summary
    assert timed("resume_new", lambda: new_resume_start(run_uri, storage)) == n
    if n <= args.old_limit:
        assert timed("status_old", lambda: old_status(run_uri, storage)).done == n
        assert timed("resume_old", lambda: old_resume_start(run_uri, storage)) == n
    return row


def _header(store_name: str) -> None:
    print(f"\n{store_name}: wall seconds (CPU seconds), best of the repeats; ratio = before / now (wall)")
    print(f"{'sequences':>9} | {'status before':>18} {'status now':>18} {'ratio':>7} {'status --verify':>18} | "
          f"{'resume before':>18} {'resume now':>18} {'ratio':>7}")


def _row(row: dict) -> None:
    """One line per size, printed as soon as it is measured."""

    def cell(key):
        return f"{row[key][0]:8.3f} ({row[key][1]:7.3f})" if key in row else f"{'skipped':>18}"

    def ratio(old, new):
        return f"{row[old][0] / row[new][0]:6.1f}x" if old in row else f"{'-':>7}"

    print(f"{row['n']:>9} | {cell('status_old')} {cell('status_new')} {ratio('status_old', 'status_new')} "
          f"{cell('verify_new')} | {cell('resume_old')} {cell('resume_new')} {ratio('resume_old', 'resume_new')}")
    sys.stdout.flush()


def main(argv=None) -> dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--stores", nargs="+", choices=["local", "moto"], default=["local", "moto"])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--intents", type=int, default=100, help="commits after the last manifest write")
    p.add_argument("--old-limit", type=int, default=10**9, help="skip the previous way above this many sequences")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    results = {}
    if "local" in args.stores:
        root = tempfile.mkdtemp(prefix="commit-record-")
        try:
            rows = results["local"] = []
            measure(build_local(root, 10, 1), 10, None, args)  # warm-up: imports and first-use costs
            _header("local disk")
            for n in args.sizes:
                start = time.perf_counter()
                run_uri = build_local(root, n, args.intents)
                print(f"local: built {n} sequences in {time.perf_counter() - start:.1f}s", file=sys.stderr)
                rows.append(measure(run_uri, n, None, args))
                _row(rows[-1])
                shutil.rmtree(run_uri)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if "moto" in args.stores:
        from pipeline.testing.s3server import FAKE_CREDENTIALS, LocalS3

        os.environ.update(FAKE_CREDENTIALS)
        with LocalS3() as s3:
            storage = StorageSpec(endpoint_url=s3.endpoint_url, region="us-east-1")
            rows = results["moto"] = []
            s3.create_bucket("bench-warm-up")
            measure(build_moto("bench-warm-up", 10, 1, storage), 10, storage, args)  # the client's first use
            _header("moto over HTTP")
            for n in args.sizes:
                bucket = f"bench-{n}"
                s3.create_bucket(bucket)
                start = time.perf_counter()
                run_uri = build_moto(bucket, n, args.intents, storage)
                print(f"moto: built {n} sequences in {time.perf_counter() - start:.1f}s", file=sys.stderr)
                rows.append(measure(run_uri, n, storage, args))
                _row(rows[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
