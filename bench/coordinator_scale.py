"""Driver bookkeeping at scale: the coordinator driven by a fake executor (no model, no Ray).

    python bench/coordinator_scale.py                          # 1k, 10k, 100k; local disk and moto
    python bench/coordinator_scale.py --sizes 1000 --stores local --sample 500
    python bench/coordinator_scale.py --stores moto --sizes 1000 10000   # moto at 100k takes hours

On moto, listing 100k keys and uploading or reading 100k markers takes tens of minutes per pass
(moto, one process, scans the bucket for every listed page), so the S3 rows are usually run to 10k.

Every sequence "finishes" the moment it is submitted, with nothing staged, so what is measured is
the driver itself: its bookkeeping, the commit marker and the event log (to a file). For each
code version, store and size it prints

- driver CPU per sequence (process CPU time, all threads, from the first submit on, divided by
  the sequences committed): over a whole run for this checkout on local disk, and over the first
  `--sample` commits of a run of N sequences elsewhere (the baseline's per-event cost grows with
  N, so a whole run at 100k would take it over an hour);
- the wall time of `status` on a finished run of N sequences;
- a resume's start: from `Coordinator.run()` to the first submit, on the same run with one
  sequence added to the input.

Each version runs in its own Python process, importing `pipeline` from its own tree: this
checkout, and `--baseline` (a commit, default bc35149, extracted with `git archive`). The run
folders for status and resume are made once, by this checkout's full local runs (uploaded to
moto for the S3 rows), and both versions read the same ones. moto runs as its own process, so
its CPU does not count as the driver's.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bench"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    if args.worker:
        return _worker(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="coordinator-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    versions = {"current": ROOT}
    if args.baseline:
        versions["baseline"] = _extract(args.baseline, work / "baseline")
    os.environ.update(FAKE_CREDENTIALS)
    with _moto(args, work) as endpoint:
        results = {}
        for name, tree in versions.items():  # this checkout first: it makes the finished runs
            results[name] = _run_worker(args, name, tree, work, endpoint)
    _print(results, args)
    return results


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--stores", nargs="+", choices=["local", "moto"], default=["local", "moto"])
    p.add_argument("--sample", type=int, default=2000, help="commits measured in the sampled runs")
    p.add_argument("--moto-sample", type=int, default=500, help="commits measured in the sampled runs on moto")
    p.add_argument("--baseline", default="bc35149", help="git commit to compare with ('' for none)")
    p.add_argument("--workdir", help="where inputs and runs go (default: a temp dir)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the version this process measures
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- orchestration ---------------------------------------------------------------------------


def _extract(commit: str, dest: Path) -> Path:
    """The baseline's pipeline and zipmap_core packages, from git."""
    if not (dest / "pipeline").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = dest / "tree.tar"
        with open(archive, "wb") as f:
            subprocess.run(["git", "archive", commit, "pipeline", "zipmap_core"], cwd=ROOT, stdout=f, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        archive.unlink()
    return dest


@contextlib.contextmanager
def _moto(args, work: Path):
    if "moto" not in args.stores:
        yield None
        return
    sys.path.insert(0, str(ROOT))
    from pipeline.testing.s3server import free_port

    port = free_port()
    log = open(work / "moto.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.testing.s3server", "--port", str(port), "--bucket", BUCKET],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True,
    )
    try:
        server.stdout.readline()  # "S3 endpoint ..." once the bucket exists
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()
        log.close()


def _run_worker(args, name: str, tree: Path, work: Path, endpoint: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--workdir", str(work)]
    cmd += ["--sizes", *map(str, args.sizes), "--stores", *args.stores]
    cmd += ["--sample", str(args.sample), "--moto-sample", str(args.moto_sample)]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} worker failed:\n{out.stderr[-5000:]}")
    line = next(line for line in reversed(out.stdout.splitlines()) if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _print(results: dict, args) -> None:
    current, baseline = results["current"], results.get("baseline", {})
    print("| store | N | what | this checkout | baseline | ratio |")
    print("|---|---|---|---|---|---|")
    for key, row in current.items():
        store, n, what = key.split("/")
        base = baseline.get(key, {})
        for metric, unit, scale in (("cpu_per_seq_ms", "ms CPU/seq", 1), ("seconds", "s", 1)):
            if metric not in row:
                continue
            ours, theirs = row[metric] * scale, base.get(metric)
            ratio = f"{theirs / ours:.1f}x" if theirs and ours else "-"
            theirs_text = f"{theirs:.3f}" if theirs is not None else "-"
            label = f"{what} ({row.get('note', '')})" if row.get("note") else what
            print(f"| {store} | {n} | {label}, {unit} | {ours:.3f} | {theirs_text} | {ratio} |")
    print("ratio: baseline / this checkout (higher is better for this checkout)")
    print(json.dumps(results))


# --- the worker: one code version ------------------------------------------------------------


class _Enough(BaseException):
    """Stops a sampled run (not an Exception, so no driver code handles it)."""


class _Ref:
    __slots__ = ("kind", "payload")

    def __init__(self, kind: str, payload=None):
        self.kind, self.payload = kind, payload


class FakeExecutor:
    """Actors that are ready at once and sequences that finish the moment they are submitted.

    The interface both versions call: start_actor, submit, wait, get, cancel, kill (and plan /
    describe_resources, which only this checkout uses)."""

    def __init__(self, num_actors: int = 1, frames: int = 8, stop_after: int | None = None):
        self.plan = SimpleNamespace(num_actors=num_actors, num_gpus=0.0, num_cpus=1.0, resources={})
        self.gang_plan = None  # every sequence on one actor
        self._frames, self._stop_after = frames, stop_after
        self.results = 0
        self.first_submit: tuple[float, float] | None = None  # (wall, cpu)
        self.stopped: tuple[float, float] | None = None

    def start_actor(self):
        return object(), _Ref("ready")

    def submit(self, actor, source, attempt_id, gang_min_frames=None):
        if self.first_submit is None:
            self.first_submit = (time.perf_counter(), time.process_time())
        return _Ref("decode"), _Ref("result", source.sequence_id)

    def wait(self, refs, timeout):
        if self._stop_after is not None and self.results >= self._stop_after:
            self.stopped = (time.perf_counter(), time.process_time())
            raise _Enough
        return list(refs)

    def get(self, ref):
        if ref.kind == "ready":
            return {"host": "fake", "pid": 0}
        self.results += 1
        staged = SimpleNamespace(files={}, num_frames=self._frames, num_points=100 * self._frames)
        timings = {"decode_s": 0.0, "infer_s": 0.0, "write_s": 0.0}
        return SimpleNamespace(
            sequence_id=ref.payload, staged=staged, timings=timings, worker={"host": "fake"}, engine={}
        )

    def cancel(self, ref):
        pass

    def kill(self, actor):
        pass

    def describe_resources(self) -> str:
        return "fake executor"


def _drive(spec, fake: FakeExecutor):
    """Coordinator(spec).run() on the fake executor, whichever version is imported."""
    import pipeline.coordinator as coordinator

    if "executor" in inspect.signature(coordinator.Coordinator).parameters:
        return coordinator.Coordinator(spec, progress=False, executor=lambda s: contextlib.nullcontext(fake)).run()
    import ray  # the baseline builds its executor itself: replace what it calls

    coordinator.connect = lambda address=None: False
    coordinator.plan_actors = lambda spec, resources, fixed_size=False: fake.plan
    coordinator.RayExecutor = lambda spec, plan: fake
    ray.cluster_resources = lambda: {"CPU": 8.0}
    return coordinator.Coordinator(spec, progress=False).run()


def _worker(args) -> dict:
    from pipeline.api import run_status
    from pipeline.spec import StorageSpec, load_spec

    name, work = args.worker, Path(args.workdir)
    logging.basicConfig(level=logging.INFO, filename=str(work / f"{name}-driver.log"), force=True)
    results: dict[str, dict] = {}
    for store in args.stores:
        storage = {"endpoint_url": args.endpoint} if store == "moto" else {}
        output = f"s3://{BUCKET}/runs" if store == "moto" else str(work / "runs")
        sample = args.moto_sample if store == "moto" else args.sample
        for n in args.sizes:
            inputs = _inputs(work, n)
            spec = load_spec(
                {
                    "input": {"manifest": str(inputs)},
                    "output": output,
                    "model": {"preset": "tiny", "allow_random_weights": True},
                    "storage": storage,
                }
            )
            # bookkeeping cost per sequence: a whole run (this checkout, local), else a sample
            whole = name == "current" and store == "local"
            fake = FakeExecutor(stop_after=None if whole or n <= sample else sample)
            cpu0 = time.process_time()
            with contextlib.suppress(_Enough):
                _drive(spec.updated(run_id=f"{name}-{n}"), fake)
            end = fake.stopped or (time.perf_counter(), time.process_time())
            committed = fake.results
            results[f"{store}/{n}/driver"] = {
                "cpu_per_seq_ms": 1000 * (end[1] - fake.first_submit[1]) / committed,
                "wall_per_seq_ms": 1000 * (end[0] - fake.first_submit[0]) / committed,
                "prepare_cpu_s": fake.first_submit[1] - cpu0,
                "sequences": committed,
                "note": "whole run" if committed == n else f"first {committed} of {n}",
            }
            finished = f"{output}/current-{n}"
            if store == "moto" and name == "current":
                _upload(str(work / "runs" / f"current-{n}"), finished, args.endpoint)
            storage_spec = StorageSpec(**storage)
            begin = time.perf_counter()
            status = run_status(finished, storage=storage_spec)
            results[f"{store}/{n}/status"] = {"seconds": time.perf_counter() - begin, "done": status.done}
            extra = f"extra-{name}-{store}"  # a sequence this resume adds (once per version and store)
            results[f"{store}/{n}/resume start"] = _resume_start(spec, finished, n, extra, work, storage_spec)
            mine = {k: v for k, v in results.items() if k.startswith(f"{store}/{n}/")}
            print(f"{name} {store} {n}: {json.dumps(mine)}", file=sys.stderr, flush=True)
            with open(work / f"{name}-results.jsonl", "a") as f:  # kept if a long run is stopped
                f.write(json.dumps(mine) + "\n")
    print("RESULT " + json.dumps(results))
    return results


def _resume_start(spec, run_uri: str, n: int, extra: str, work: Path, storage) -> dict:
    """From run() to the first submit, resuming a finished run whose input gained one sequence."""
    from pipeline.storage import Store

    inputs = _inputs(work, n, extra=extra)
    resumed = spec.updated(run_id=run_uri.rsplit("/", 1)[-1], input={"manifest": str(inputs)})
    Store(run_uri, storage).write_bytes(f"{run_uri}/spec.json", resumed.to_json().encode())  # this version's form
    fake = FakeExecutor()
    begin = time.perf_counter()
    _drive(resumed, fake)
    assert fake.results == 1, fake.results
    return {"seconds": fake.first_submit[0] - begin}


def _inputs(work: Path, n: int, extra: str | None = None) -> Path:
    """A manifest of n sequences (plus `extra`): video URIs, so discovery lists nothing."""
    path = work / f"input-{n}{'-' + extra if extra else ''}.csv"
    if not path.exists():
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["sequence_id", "uri"])
            for i in range(n):
                writer.writerow([f"s{i:06d}", f"/nonexistent/s{i:06d}.mp4"])
            if extra:
                writer.writerow([extra, f"/nonexistent/{extra}.mp4"])
    return path


def _upload(local: str, uri: str, endpoint: str) -> None:
    """Copy a finished local run to S3 (many PUTs at once)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    files = [os.path.join(d, f) for d, _, names in os.walk(local) for f in names]
    target = uri.removeprefix("s3://")
    fs.put(files, [f"{target}/{os.path.relpath(f, local)}" for f in files], batch_size=64)


if __name__ == "__main__":
    main()
