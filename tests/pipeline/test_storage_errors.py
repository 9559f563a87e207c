"""Storage, credential and checkpoint problems: one-line errors with the documented exit codes, found
before Ray starts or a run folder exists, and credentials never printed or stored (issues 15 and 20).

The S3 cases run against moto's server over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline import run_job
from pipeline.cli import main
from pipeline.errors import InfrastructureError
from pipeline.testing.s3server import FAKE_CREDENTIALS, LocalS3, free_port

from .conftest import make_spec, write_sequence

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]
SECRET = "PASSWORD"


@pytest.fixture(scope="module")
def s3():
    with LocalS3() as server:
        for bucket in ("capture", "results"):
            server.create_bucket(bucket)
        yield server


@pytest.fixture
def aws(monkeypatch):
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # an unreachable endpoint fails in seconds, not a minute


def _cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _error_lines(err: str) -> list[str]:
    """stderr without log lines (which start with a time stamp)."""
    return [line for line in err.splitlines() if line.strip() and not line[:4].isdigit()]


def test_credentials_in_an_input_uri_are_never_printed(s3, aws, tiny_checkpoint, tmp_path, capsys):
    """The issue's case: botocore echoes the bucket name, password included."""
    spec = make_spec("s3://x/in", tmp_path / "out", tiny_checkpoint, storage__endpoint_url=s3.endpoint_url)
    data = json.loads(spec.to_json())
    data["input"]["prefix"] = f"s3://USER:{SECRET}@capture/in"
    job = tmp_path / "job.json"
    job.write_text(json.dumps(data))
    assert main(["run", str(job), "--no-progress"]) == 3
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert _error_lines(captured.err) == [
        "infrastructure error: cannot read the input s3://***@capture/in: S3 URIs cannot hold credentials "
        "(user:password@): give them to the process in its environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE) (-v shows the traceback)"
    ]
    # with debug logs of every library and the traceback, in a process of its own (as a user runs it)
    done = _cli("-v", "run", str(job), "--no-progress", env=FAKE_CREDENTIALS)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" in done.stderr and "botocore" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert not (tmp_path / "out").exists()


def test_credentials_in_a_manifest_row_are_never_stored(ray_cluster, s3, tiny_checkpoint, tmp_path):
    """A sequence whose URI holds a password fails; its row, the summary, the logs and every file
    of the run show the failure with the password replaced."""
    write_sequence(tmp_path / "in" / "good", 2, seed=0)
    (tmp_path / "list.csv").write_text(f"uri\nin/good\ns3://USER:{SECRET}@capture/clip.mp4\n")
    spec = make_spec(
        tmp_path,
        tmp_path / "out",
        tiny_checkpoint,
        run_id="secret",
        input__prefix="null",
        input__manifest=str(tmp_path / "list.csv"),
        storage__endpoint_url=s3.endpoint_url,
        retry__max_attempts=1,
    )
    job = tmp_path / "job.json"
    job.write_text(spec.to_json())
    done = _cli("run", str(job), "--no-progress", env={**FAKE_CREDENTIALS, "RAY_ADDRESS": ray_cluster.address})
    assert done.returncode == 1, done.stderr[-3000:]
    assert SECRET not in done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert (summary["done"], summary["failed"]) == (1, 1)

    run = tmp_path / "out" / "secret"
    stored = []
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        data = str(pq.read_table(path).to_pylist()).encode() if path.suffix == ".parquet" else path.read_bytes()
        assert SECRET.encode() not in data, path
        stored.append(path.relative_to(run).as_posix())
    assert {"manifest.parquet", "summary.json", "spec.json", "_commits/in_good.json"} <= set(stored)
    rows = {r["status"]: r for r in pq.read_table(run / "manifest.parquet").to_pylist()}
    assert rows["failed"]["source_uri"] == "s3://***@capture/clip.mp4"
    assert rows["failed"]["sequence_id"] == "s3__capture_clip"  # the id is made from the URI without its password


def test_storage_problems_are_one_line_errors(s3, aws, tiny_checkpoint, tmp_path, capsys):
    # an endpoint where nothing listens
    closed = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "s3://results/recon/r1", "--endpoint-url", closed]) == 3
    err = _error_lines(capsys.readouterr().err)
    assert err == [
        f"infrastructure error: cannot read s3://results/recon/r1: cannot reach the endpoint {closed} "
        "(-v shows the traceback)"
    ]

    # a spec read from S3 (the endpoint given on the command line) whose output bucket does not exist
    write_sequence(tmp_path / "in" / "a", 2, seed=0)
    fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url)
    fs.pipe_file(
        "capture/jobs/job.json",
        make_spec(tmp_path / "in", "s3://no-such-bucket/recon", tiny_checkpoint).to_json().encode(),
    )
    assert main(["run", "s3://capture/jobs/job.json", "--endpoint-url", s3.endpoint_url, "--no-progress"]) == 3
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "bucket 'no-such-bucket' does not exist" in err[0], err

    # a spec that is not there is a usage error
    assert main(["run", "s3://capture/jobs/nope.yaml", "--endpoint-url", s3.endpoint_url]) == 2
    assert _error_lines(capsys.readouterr().err) == ["error: spec file not found: s3://capture/jobs/nope.yaml"]


def test_missing_credentials_are_one_line_errors(s3):
    """No credentials anywhere (environment, files, instance metadata): a child process, because
    clients cache the credentials they found."""
    env = {k: "" for k in FAKE_CREDENTIALS} | {
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    done = _cli("status", "s3://results/recon/r1", "--endpoint-url", s3.endpoint_url, env=env)
    assert done.returncode == 3, done.stderr[-3000:]
    assert _error_lines(done.stderr) == [
        "infrastructure error: cannot read s3://results/recon/r1: no credentials found: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the machine a role) in the environment "
        "(-v shows the traceback)"
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["missing", "empty", "folder", "not a checkpoint", "missing on S3"])
def test_a_bad_checkpoint_is_found_before_the_run_starts(ray_cluster, s3, aws, tmp_path, kind):
    write_sequence(tmp_path / "in" / "a", 2, seed=0)
    checkpoint = str(tmp_path / "model.pt")
    if kind == "empty":
        Path(checkpoint).write_bytes(b"")
    elif kind == "folder":
        os.mkdir(checkpoint)
    elif kind == "not a checkpoint":
        Path(checkpoint).write_text("<html>not found</html>")
    elif kind == "missing on S3":
        checkpoint = "s3://capture/models/none.pt"
    spec = make_spec(tmp_path / "in", tmp_path / "out", checkpoint, storage__endpoint_url=s3.endpoint_url)
    start = time.monotonic()
    with pytest.raises(InfrastructureError, match=checkpoint.rsplit("/", 1)[-1]):
        run_job(spec)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()  # no run folder for a run that cannot start


def test_a_missing_checkpoint_stops_the_cli_before_ray_starts(tmp_path):
    write_sequence(tmp_path / "in" / "a", 2, seed=0)
    job = tmp_path / "job.json"
    job.write_text(make_spec(tmp_path / "in", tmp_path / "out", tmp_path / "none.pt").to_json())
    done = _cli("run", str(job), env={"RAY_ADDRESS": ""})
    assert done.returncode == 3, done.stderr[-3000:]
    assert _error_lines(done.stderr) == [
        f"infrastructure error: model.checkpoint not found: {tmp_path / 'none.pt'} (-v shows the traceback)"
    ]
    assert "Ray" not in done.stderr  # no cluster was started or joined
    assert not (tmp_path / "out").exists()
