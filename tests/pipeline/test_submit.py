"""`zipmap-pipeline submit` against a real Ray job server: a head started here with its dashboard.

One head serves the module (job submission is slow on 2 cores). Each test runs the CLI in a
subprocess, as a user would, submits a real tiny job and reads what the CLI prints while the job
runs. The head uses token authentication, as clusters that Ray 2.60 starts do by default; the CLI
gets the token from its environment, the test's own client in a header.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import s3fs
import yaml
from ray.job_submission import JobSubmissionClient

from pipeline import read_outputs
from pipeline.cli import main
from pipeline.submission import RESULT_MARKER, runtime_env
from pipeline.testing.faults import ENV as FAULTS_ENV
from pipeline.testing.faults import FaultPlan
from pipeline.testing.s3server import FAKE_CREDENTIALS, LocalS3, free_port

from .conftest import make_spec, write_sequence

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}


@pytest.fixture(scope="module")
def job_server():
    """`ray start --head --block` with the dashboard (the job server) on free ports; yields its address."""
    temp_dir = tempfile.mkdtemp(prefix="jobs-", dir=os.environ.get("RAY_TMPDIR") or "/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    env.update(AUTH)
    env.update(FAKE_CREDENTIALS)  # the nodes' credentials, as a cluster gets them (a Secret, an instance role)
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # the job's `python`
    )
    dashboard = free_port()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port=0", "--num-cpus=2"]
    command += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
    command += [f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}"]
    command += [f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = open(os.path.join(temp_dir, "head.log"), "w")
    head = subprocess.Popen(  # jobs start in its folder, not in this checkout (as on a cluster)
        command, cwd=temp_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, open(log.name).read()[-3000:]
            try:  # the token in a header: this process's own Ray auth settings stay as they are
                client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {AUTH['RAY_AUTH_TOKEN']}"})
                break
            except Exception:
                assert time.monotonic() < deadline, "the job server did not come up"
                time.sleep(1)
        yield address, client
        for job in client.list_jobs():  # nothing may outlive the head
            if not job.status.is_terminal():
                client.stop_job(job.submission_id)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(3)
        with contextlib.suppress(ProcessLookupError):  # what outlived the head's own shutdown (all started here)
            os.killpg(head.pid, signal.SIGKILL)
        log.close()


class Cli:
    """`zipmap-pipeline submit ...` in a subprocess; its output lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        full_env.update({**AUTH, **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "submit", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.stderr_times: list[float] = []  # time.time() when each stderr line arrived
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, []), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, self.stderr_times), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str], times: list[float]) -> None:
        for line in stream:
            times.append(time.time())
            lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 150) -> float:
        """When the first stderr line matching `pattern` arrived (time.time()), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line, at in zip(list(self.stderr), list(self.stderr_times)):
                if re.search(pattern, line):
                    return at
            if self.proc.poll() is not None and not self._readers[1].is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.text}")

    def job_id(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while not self.stdout:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.text
            time.sleep(0.1)
        return json.loads(self.stdout[0])["job_id"]

    def finish(self, timeout: float = 200) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code

    @property
    def text(self) -> str:
        return "".join(self.stdout) + "\n--- stderr ---\n" + "".join(self.stderr)


def _slow(delay_s: float) -> list[str]:
    """`submit` flags that make every sequence take `delay_s` longer in the job's model actors (a
    test fault plan, handed to the job through its environment: job specs cannot hold one)."""
    return ["--env", f"{FAULTS_ENV}={FaultPlan(delay_s=delay_s).model_dump_json()}"]


def _spec_file(tmp_path: Path, spec) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))
    return str(path)


def _wait_status(client, job_id: str, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while (status := str(client.get_job_status(job_id))) not in wanted:
        assert time.monotonic() < deadline, f"job {job_id} is {status}"
        time.sleep(0.5)
    return status


def test_submit_streams_the_log_passes_the_environment_and_exits_with_the_run_code(
    job_server, tiny_checkpoint, tmp_path
):
    """Logs arrive while the job runs; a --runtime-env file reaches the driver and the workers (they
    find the inputs' S3 endpoint only through it), merged with --env; a run with a bad sequence
    exits 1, the code of partial results."""
    address, client = job_server
    with LocalS3() as s3:
        s3.create_bucket("submit-inputs")  # moto keeps buckets per process: a name no other test uses
        for name, n in (("day", 2), ("night", 3)):
            write_sequence(tmp_path / "in" / name, n, seed=n)
        (tmp_path / "in" / "bad").mkdir()
        for frame in ("x.jpg", "y.jpg"):
            (tmp_path / "in" / "bad" / frame).write_bytes(b"nope")
        fs = s3fs.S3FileSystem(endpoint_url=s3.endpoint_url, key="testing", secret="testing")
        fs.put(str(tmp_path / "in") + "/", "submit-inputs/takes/", recursive=True)
        spec = make_spec("s3://submit-inputs/takes", tmp_path / "out", tiny_checkpoint, run_id="env")

        env_file = tmp_path / "runtime_env.yaml"
        env_file.write_text(yaml.safe_dump({"env_vars": {"AWS_ENDPOINT_URL": s3.endpoint_url, "NOTE": "file"}}))
        flags = ["--address", address, "--wait", "--runtime-env", str(env_file), "--env", "NOTE=flag", *_slow(3)]
        cli = Cli(_spec_file(tmp_path, spec), *flags)
        job_id = cli.job_id()
        shown_at = cli.wait_for("actor_ready actor=0")  # a line of the driver's log ...
        code = cli.finish()

    assert code == 1, cli.text
    info = client.get_job_info(job_id)
    assert shown_at < info.end_time / 1000, "... shown while the job still ran (it ran 2 x 3 s longer)"
    assert f"{RESULT_MARKER} 1" in cli.text and "ended with exit code 1" in cli.text
    assert info.runtime_env["env_vars"] == {
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "NOTE": "flag",  # --env over the file
        FAULTS_ENV: FaultPlan(delay_s=3).model_dump_json(),
        "RAY_JOB_STOP_WAIT_TIME_S": "30",
    }
    outputs = read_outputs(str(tmp_path / "out" / "env"))
    assert sorted(set(outputs.frames.column("sequence_id").to_pylist())) == ["day", "night"]
    assert len(outputs.manifest) == 3


def test_an_entrypoint_that_cannot_import_is_an_infrastructure_failure(job_server, tiny_checkpoint, tmp_path):
    """The job's `python` lacks the project (`No module named 'jobs'`): Python exits 1, which is not
    "some sequences failed" but a job that could not run."""
    address, client = job_server
    write_sequence(tmp_path / "in" / "s", 2, seed=0)
    bare = tmp_path / "bare"  # a `python` without the project, as in an image built without it
    bare.mkdir()
    (bare / "python").symlink_to(sys._base_executable)
    assert Path(sys._base_executable).parent != Path(sys.executable).parent, "the tests run in a virtualenv"
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="noimport")

    cli = Cli(_spec_file(tmp_path, spec), "--address", address, "--wait", "--env", f"PATH={bare}:/usr/bin:/bin")
    code = cli.finish()

    assert code == 3, cli.text
    error = cli.stderr[-1]
    assert error.startswith("infrastructure error: job ") and "failed before the pipeline reported" in error, error
    assert "No module named 'jobs'" in error and "--run-id noimport" in error, error
    assert str(client.get_job_status(cli.job_id())) == "FAILED"


def _interrupted_job(address: str, tiny_checkpoint: Path, tmp_path: Path, run_id: str) -> tuple[Cli, str]:
    """`submit --wait` of a job that would take a minute, sent one Ctrl-C once its actor starts."""
    write_sequence(tmp_path / "in" / "s", 2, seed=0)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id=run_id)
    cli = Cli(_spec_file(tmp_path, spec), "--address", address, "--wait", *_slow(60))
    job_id = cli.job_id()
    cli.wait_for("starting 1 model actor")
    cli.proc.send_signal(signal.SIGINT)
    return cli, job_id


def test_ctrl_c_stops_the_job(job_server, tiny_checkpoint, tmp_path):
    """The first Ctrl-C asks Ray to stop the job and waits for it; no second driver is suggested
    while the job lives; the stopped driver still writes the run's manifest and summary."""
    address, client = job_server
    cli, job_id = _interrupted_job(address, tiny_checkpoint, tmp_path, "stopme")
    code = cli.finish(timeout=90)

    assert code == 130, cli.text
    assert str(client.get_job_status(job_id)) == "STOPPED"
    assert "SIGINT: stopping job" in cli.text and f"job {job_id} stopped" in cli.text, cli.text
    assert "--run-id stopme" in cli.text and "resume" not in cli.text, cli.text
    summary = json.loads((tmp_path / "out" / "stopme" / "summary.json").read_text())
    assert (summary["status"], summary["pending"]) == ("incomplete", 1)


def test_a_second_ctrl_c_detaches_while_the_stop_goes_on(job_server, tiny_checkpoint, tmp_path):
    """Ctrl-C, then Ctrl-C again as soon as the stop is announced: `submit` returns at once, says the
    job is being stopped and may still write, names the commands to follow it and no second driver;
    the stop it asked for completes without it."""
    address, client = job_server
    cli, job_id = _interrupted_job(address, tiny_checkpoint, tmp_path, "detach")
    cli.wait_for("SIGINT: stopping job")
    cli.proc.send_signal(signal.SIGINT)
    code = cli.finish(timeout=30)

    assert code == 130, cli.text
    error = cli.stderr[-1]
    assert error.startswith(f"[submit] detached from job {job_id} ("), error
    assert "it is being stopped and may still write to" in error and f"ray job logs --follow {job_id}" in error, error
    assert "Do not start another driver for run detach" in error and "stopped;" not in cli.text, cli.text
    _wait_status(client, job_id, {"STOPPED"})


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target port until `cut()`, like a `kubectl port-forward` that dies."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_losing_the_job_server_gives_up_in_bounded_time(job_server, tiny_checkpoint, tmp_path):
    """The dashboard vanishes mid-run: exit 3 after --unreachable-timeout, saying the job may still run."""
    address, client = job_server
    write_sequence(tmp_path / "in" / "s", 2, seed=0)
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint, run_id="lost")
    proxy = TcpProxy(int(address.rsplit(":", 1)[1]))

    cli = Cli(
        _spec_file(tmp_path, spec),
        "--address",
        f"http://127.0.0.1:{proxy.port}",
        "--wait",
        "--unreachable-timeout",
        "5",
        *_slow(60),
    )
    job_id = cli.job_id()
    cli.wait_for("starting 1 model actor")  # streamed through the proxy
    proxy.cut()
    cut_at = time.monotonic()
    code = cli.finish(timeout=90)
    took = time.monotonic() - cut_at

    assert code == 3, cli.text
    assert took < 5 + 2 * 15 + 10, took  # the timeout, plus at most a poll's request timeouts
    error = cli.stderr[-1]
    assert error.startswith(f"infrastructure error: lost the job server at http://127.0.0.1:{proxy.port}"), error
    assert f"job {job_id} may still be running" in error and "Do not start another driver" in error, error
    assert str(client.get_job_status(job_id)) == "RUNNING"  # it was, indeed
    client.stop_job(job_id)
    _wait_status(client, job_id, {"STOPPED"})


def test_a_missing_token_is_named(job_server, tiny_checkpoint, tmp_path):
    address, _ = job_server
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    cli = Cli(_spec_file(tmp_path, spec), "--address", address, env={"RAY_AUTH_MODE": "disabled"})
    assert cli.finish(timeout=60) == 3
    assert "Unauthorized" in cli.stderr[-1] and "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in cli.stderr[-1]


def test_submit_checks_its_arguments_before_contacting_the_cluster(tmp_path, tiny_checkpoint, capsys):
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    path = _spec_file(tmp_path, spec)
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", path, "--address", nowhere, "--env", "no equals sign"]) == 2
    assert "--env 'no equals sign': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["submit", path, "--address", nowhere, "--env", "AWS_SECRET_ACCESS_KEY=x"]) == 2
    assert "credentials (env_vars.AWS_SECRET_ACCESS_KEY)" in capsys.readouterr().err
    assert main(["submit", path, "--address", nowhere, "--runtime-env", "{not json"]) == 2
    assert main(["submit", path, "--address", nowhere]) == 3  # nothing listens there: fails at once
    assert f"cannot reach the job server at {nowhere}" in capsys.readouterr().err


def test_runtime_env_merges_file_env_pip_and_working_dir(tmp_path):
    base = tmp_path / "env.yaml"
    base.write_text("env_vars: {A: '1', B: '2'}\npip: [numpy]\nexcludes: ['*.bin']\n")
    assert runtime_env(str(base), env=["B=3", "C=x=y"], pip=["av>=12"], working_dir="code") == {
        "env_vars": {"A": "1", "B": "3", "C": "x=y"},
        "pip": ["numpy", "av>=12"],
        "excludes": ["*.bin"],
        "working_dir": "code",
    }
    assert runtime_env('{"pip": {"packages": ["a"], "pip_check": false}}', pip=["b"]) == {
        "pip": {"packages": ["a", "b"], "pip_check": False}
    }
    assert runtime_env(working_dir=".")["excludes"] == [".venv", ".git", "outputs", "**/__pycache__"]
    assert runtime_env() is None
