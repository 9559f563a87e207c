"""Which Ray cluster a driver uses, and giving up on one that does not answer (issue 20, items 6 and 9).

Drivers run as subprocesses (the test process is already connected to the shared cluster). Each
run asks for more CPUs per actor than any cluster here has, so it stops right after choosing
its cluster (exit 2), which keeps these tests short.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from pipeline.spec import ResourcesSpec
from pipeline.testing.s3server import free_port

from .conftest import make_spec, write_sequence

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]
STOP_AFTER_CONNECT = "resources.cpus_per_actor=64"  # refused once the cluster is known (exit 2)


@pytest.fixture
def job(tiny_checkpoint, tmp_path) -> Path:
    write_sequence(tmp_path / "in" / "a", 2, seed=0)
    path = tmp_path / "job.json"
    path.write_text(make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint).to_json())
    return path


def _env(**changes: str | None) -> dict[str, str]:
    """The test's environment with `changes` (None: removed), able to import the project."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env=env or _env(RAY_ADDRESS=None),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stderr, time.monotonic() - start


@pytest.fixture
def private_ray_tmpdir():
    """A Ray temp folder whose current-cluster file names the shared test cluster, as `ray start`
    leaves it on a machine where somebody else's cluster runs (short path: Ray's socket names)."""
    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as folder:
        yield folder


def test_a_run_starts_its_own_ray_even_when_another_runs_here(ray_cluster, job, private_ray_tmpdir):
    os.makedirs(os.path.join(private_ray_tmpdir, "ray"))
    with open(os.path.join(private_ray_tmpdir, "ray", "ray_current_cluster"), "w") as f:
        f.write(ray_cluster.address)
    env = _env(RAY_TMPDIR=private_ray_tmpdir, RAY_ADDRESS=None)

    code, err, _ = _cli("run", str(job), "--no-progress", "--set", STOP_AFTER_CONNECT, env=env)
    assert code == 2, err[-3000:]
    started = re.search(r"started a local Ray cluster for this run at (\S+)", err)
    assert started, err[-3000:]
    assert started.group(1) != ray_cluster.address
    assert "joined" not in err

    # joining the cluster found on this machine is there, but only when asked for
    code, err, _ = _cli("run", str(job), "--no-progress", "--address", "auto", "--set", STOP_AFTER_CONNECT, env=env)
    assert code == 2, err[-3000:]
    assert f"joined the Ray cluster at {ray_cluster.address}" in err, err[-3000:]


def test_ray_address_in_the_environment_joins_that_cluster(ray_cluster, job):
    code, err, _ = _cli(
        "run", str(job), "--no-progress", "--set", STOP_AFTER_CONNECT, env=_env(RAY_ADDRESS=ray_cluster.address)
    )
    assert code == 2, err[-3000:]
    assert f"joined the Ray cluster at {ray_cluster.address}" in err, err[-3000:]


def test_unreachable_ray_gives_up_within_the_timeout(job):
    """Nothing listens: exit 3 after the configured time, one line naming the address."""
    port = free_port("0.0.0.0")
    code, err, seconds = _cli(
        "run", str(job), "--no-progress", "--address", f"127.0.0.1:{port}", "--set", "resources.ray_connect_timeout_s=3"
    )
    assert code == 3, err[-3000:]
    assert f"infrastructure error: cannot reach Ray at 127.0.0.1:{port} within 3s" in err
    assert "Traceback" not in err
    assert seconds < 40, seconds  # 3 s of knocking plus start-up; Ray alone would retry for minutes


def test_an_address_that_is_not_ray_gives_up_within_the_timeout(job):
    """Something accepts connections but never answers as a GCS would: exit 3 after the timeout."""
    server = socket.create_server(("0.0.0.0", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        code, err, seconds = _cli(
            "run", str(job), "--address", f"127.0.0.1:{port}", "--set", "resources.ray_connect_timeout_s=4"
        )
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
    assert code == 3, err[-3000:]
    assert "accepts connections but did not answer within 4s" in err, err[-3000:]
    assert seconds < 45, seconds


def test_run_job_raises_infrastructure_error_when_ray_is_unreachable(job):
    """The Python API: run_job(spec, ray_address=...) raises InfrastructureError within the timeout."""
    script = (
        "import sys\n"
        "from pipeline import load_spec, run_job\n"
        "from pipeline.errors import InfrastructureError\n"
        f"spec = load_spec({str(job)!r}, ['resources.ray_connect_timeout_s=2'])\n"
        "try:\n"
        f"    run_job(spec, ray_address='127.0.0.1:{free_port('0.0.0.0')}')\n"
        "except InfrastructureError as exc:\n"
        "    print('raised:', exc)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=_env(RAY_ADDRESS=None), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "raised: cannot reach Ray at 127.0.0.1:" in done.stdout


def test_default_connect_timeout_is_at_most_a_minute():
    assert 0 < ResourcesSpec().ray_connect_timeout_s <= 60
