"""A long run that loses a model actor and its driver, then is resumed: all done exactly once?

    python bench/driver_soak.py --sequences 2000 --workdir /tmp/soak     # CPU, tiny model

It starts its own Ray cluster (in this process, so drivers come and go while it stays), runs
`zipmap-pipeline run` on synthetic sequences (tiny preset, random weights), SIGKILLs the model
actor's process once `--kill-actor-at` of the sequences are done and the driver once
`--kill-driver-at` are, checks that `status` calls the driver dead, runs `zipmap-pipeline
resume`, and then checks the run: one commit marker, one frames partition with every frame,
and one PLY per sequence, nothing staged, and committed sequences not redone by the resume.
It prints wall time, driver CPU and the time per sequence beyond the model's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline_throughput as throughput  # noqa: E402  (the synthetic inputs)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    work, inputs = throughput.prepare_inputs(args, "zipmap-soak-")
    spec_path = _write_spec(args, inputs, work)
    run_uri = str(work / "output" / "soak")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus, "include_dashboard": False})
    address = cluster.address
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "pipeline.cli"]
    report: dict = {"sequences": args.sequences, "frames_per_sequence": args.frames}
    try:
        begin = time.monotonic()
        with open(work / "driver-1.log", "wb") as log:
            driver = subprocess.Popen([*cli, "run", str(spec_path), "--address", address], env=env, stderr=log,
                                      stdout=subprocess.DEVNULL)
        killed_actor = _wait_done(run_uri, args.kill_actor_at * args.sequences, driver)
        report["actor_killed"] = _kill_model_actor(work / "driver-1.log")
        report["actor_killed_after_done"] = killed_actor
        report["driver_killed_after_done"] = _wait_done(run_uri, args.kill_driver_at * args.sequences, driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        first_session = time.monotonic() - begin
        from pipeline.api import run_status

        dead = run_status(run_uri)
        report["status_after_kill"] = {"driver": dead.driver["state"], "done": dead.done, "pending": dead.pending}
        before = _markers(run_uri)
        resume_begin = time.monotonic()
        with open(work / "driver-2.log", "wb") as log:
            resumed = subprocess.run([*cli, "resume", run_uri, "--address", address], env=env, stderr=log,
                                     stdout=subprocess.PIPE, text=True)
        second_session = time.monotonic() - resume_begin
        report["resume_exit_code"] = resumed.returncode
        report["summary"] = json.loads(resumed.stdout)
    finally:
        cluster.shutdown()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # both drivers (Ray ran in its own processes)
    report.update(_check(run_uri, args, before))
    infer = report.pop("infer_s_total")
    wall = first_session + second_session
    report["wall_s"] = {"first_session": round(first_session, 1), "resume": round(second_session, 1),
                        "total": round(wall, 1)}
    report["per_sequence_s"] = {
        "wall": round(wall / args.sequences, 4),
        "model_inference": round(infer / args.sequences, 4),
        "overhead_beyond_inference": round((wall - infer) / args.sequences, 4),
    }
    report["driver_cpu_per_sequence_ms"] = round(1000 * (usage.ru_utime + usage.ru_stime) / args.sequences, 3)
    print(json.dumps(report, indent=2))
    return report


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sequences", type=int, default=2000)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray head")
    p.add_argument("--kill-actor-at", type=float, default=0.25, help="share of sequences done")
    p.add_argument("--kill-driver-at", type=float, default=0.5, help="share of sequences done")
    p.add_argument("--workdir")
    args = p.parse_args(argv)
    args.input, args.preset, args.checkpoint, args.size = None, "tiny", None, 112
    return args


def _write_spec(args, inputs: str, work: Path) -> Path:
    spec = {
        "input": {"prefix": inputs},
        "output": str(work / "output"),
        "run_id": "soak",
        "model": {"preset": "tiny", "allow_random_weights": True},
        "preprocess": {"size": args.size},
        "resources": {"num_actors": 1, "cpus_per_actor": 1, "device": "cpu"},
        "retry": {"backoff_s": 0.5},
        "driver": {"heartbeat_s": 2, "lease_expiry_s": 10},
    }
    path = work / "job.json"
    path.write_text(json.dumps(spec))
    return path


def _wait_done(run_uri: str, count: float, driver: subprocess.Popen) -> int:
    commits = Path(run_uri) / "_commits"
    while True:
        done = sum(1 for name in os.listdir(commits) if name.endswith(".json")) if commits.exists() else 0
        if done >= count:
            return done
        if driver.poll() is not None:
            raise SystemExit(f"the driver exited ({driver.returncode}) with {done} done")
        time.sleep(0.2)


def _kill_model_actor(log: Path) -> dict:
    """SIGKILL the model actor's process (its pid is in the driver's `actor_ready` log line)."""
    ready = [line for line in log.read_text().splitlines() if "actor_ready" in line]
    pid = int(ready[-1].split(" pid=", 1)[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid}


def _markers(run_uri: str) -> dict[str, str]:
    folder = Path(run_uri) / "_commits"
    return {p.stem: json.loads(p.read_text())["attempt_id"] for p in folder.glob("*.json")}


def _check(run_uri: str, args, before: dict[str, str]) -> dict:
    from pipeline.reader import read_outputs

    run = Path(run_uri)
    markers = _markers(run_uri)
    outputs = read_outputs(run_uri)
    rows = outputs.frames.select(["sequence_id", "frame_index"]).to_pylist()
    frames: dict[str, list[int]] = {}
    for row in rows:
        frames.setdefault(row["sequence_id"], []).append(row["frame_index"])
    parts = {p.parent.name.split("=", 1)[1]: len(list(p.parent.glob("*.parquet"))) for p in run.glob("frames/*/*")}
    manifest = outputs.manifest.to_pylist()
    ids = {f"seq{i:04d}" for i in range(args.sequences)}
    checks = {
        "every_sequence_committed_once": set(markers) == ids and len(markers) == args.sequences,
        "every_frame_once": all(sorted(frames.get(s, [])) == list(range(args.frames)) for s in ids),
        "one_frames_file_each": set(parts) == ids and set(parts.values()) == {1},
        "one_point_cloud_each": {p.stem for p in (run / "points").glob("*.ply")} == ids,
        "committed_before_the_kill_not_redone": {k: markers[k] for k in before} == before,
        "nothing_staged": not (run / "_staging").exists(),
        "manifest_all_done": {r["status"] for r in manifest} == {"done"} and len(manifest) == args.sequences,
    }
    attempts = [r["attempts"] for r in manifest]
    return {
        "checks": checks,
        "all_checks_pass": all(checks.values()),
        "sequences_with_more_than_one_attempt": sum(a > 1 for a in attempts),
        "infer_s_total": sum(r["infer_s"] or 0.0 for r in manifest),
    }


if __name__ == "__main__":
    main()
