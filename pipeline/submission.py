"""`zipmap-pipeline submit`: hand a job spec to a Ray cluster's job server and follow the job.

The spec is validated and resolved here and runs on the cluster as `python -m jobs.reconstruct
--spec-json ...`, in a runtime environment built from `--runtime-env`, `--env`, `--pip` and
`--working-dir`. `Follower` streams the job's log while it runs and turns how it ended into an
exit code (`docs/pipeline.md`, "Exit codes"):

- the driver's own code (0 all done, 1 some sequences failed, 2 bad spec, 3 infrastructure), but
  only when the driver reported it: `jobs.reconstruct` ends its log with `RESULT_MARKER <code>`.
  A driver that ends without that line never ran the pipeline to an end (its entrypoint could not
  import, it was killed), so Python's exit 1 after a traceback is not mistaken for "some
  sequences failed": that is 3, like a runtime environment that could not be set up;
- 3 when the job server stays unreachable for `unreachable_timeout_s` (the job may still run);
- 128 + signal (130 for Ctrl-C, 143 for SIGTERM) when interrupted: the first signal asks Ray to
  stop the job and waits until it has stopped; a second one detaches and leaves the job running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from .errors import InfrastructureError, SpecError, one_line
from .redaction import REDACTED
from .spec import JobSpec, secret_keys

RESULT_MARKER = "zipmap-pipeline driver exit code:"
# Seconds Ray waits after SIGTERM before it kills a stopped job's driver (its default, 3 s, can cut
# the driver off while it cancels work and writes the manifest); the job's own setting wins.
STOP_GRACE_S = 30
WORKING_DIR_EXCLUDES = [".venv", ".git", "outputs", "**/__pycache__"]
# (connect, read) seconds per HTTP method: no request to the job server waits forever
_TIMEOUTS = {"GET": (10, 15), "POST": (10, 60), "PUT": (10, 300)}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MEANING = {
    0: "every sequence done",
    1: "some sequences failed or are unfinished",
    2: "the driver rejected the spec",
    3: "the driver stopped on an infrastructure error",
}


def result_line(code: int) -> str:
    """The last line a job driver prints: how `submit --wait` tells the pipeline's exit codes from a crash."""
    return f"{RESULT_MARKER} {code}"


# --- what runs on the cluster ----------------------------------------------------------------


def entrypoint(spec: JobSpec) -> str:
    spec_json = json.dumps(spec.model_dump(mode="json"), separators=(",", ":"))
    if REDACTED in spec_json:
        raise SpecError("the spec holds credentials (in a URI); give them to the cluster through its environment")
    return f"python -m jobs.reconstruct --spec-json {shlex.quote(spec_json)}"


def runtime_env(
    base: str | None = None,
    *,
    env: Sequence[str] = (),
    pip: Sequence[str] = (),
    working_dir: str | None = None,
) -> dict[str, Any] | None:
    """The job's Ray runtime environment: `base` (a YAML/JSON file, or JSON text), then
    `working_dir`, `KEY=VALUE` environment variables and pip packages on top of it."""
    result = _load_runtime_env(base) if base else {}
    if working_dir:
        result["working_dir"] = working_dir
        result.setdefault("excludes", WORKING_DIR_EXCLUDES)
    if env:
        result["env_vars"] = {**result.get("env_vars", {}), **_env_vars(env)}
    if pip:
        result["pip"] = _with_packages(result.get("pip"), list(pip))
    found = secret_keys(result)
    if found:
        raise SpecError(
            f"the job's runtime environment holds credentials ({', '.join(found)}), which anyone who can see the "
            "cluster's dashboard can read; give them to the cluster's nodes (a Kubernetes Secret, an instance role)"
        )
    return result or None


def _load_runtime_env(value: str) -> dict[str, Any]:
    if value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SpecError(f"--runtime-env is not valid JSON: {exc}") from None
    else:
        try:
            data = yaml.safe_load(Path(value).read_text())
        except OSError as exc:
            raise SpecError(f"cannot read the --runtime-env file {value}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SpecError(f"the --runtime-env file {value} is neither YAML nor JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"--runtime-env must be a mapping (working_dir, env_vars, pip, ...), not {type(data).__name__}")
    return data


def _env_vars(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not _ENV_NAME.fullmatch(key):
            raise SpecError(f"--env {pair!r}: expected NAME=VALUE")
        out[key] = value
    return out


def _with_packages(existing: Any, packages: list[str]) -> Any:
    if existing is None:
        return packages
    if isinstance(existing, list):
        return existing + packages
    if isinstance(existing, dict) and isinstance(existing.get("packages"), list):
        return {**existing, "packages": existing["packages"] + packages}
    raise SpecError(f"--pip cannot add to the runtime environment's pip {existing!r}; list the packages there")


# --- the job server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedJob:
    address: str
    job_id: str
    run_id: str
    run_uri: str

    def as_dict(self) -> dict[str, str]:
        return {"job_id": self.job_id, "run_id": self.run_id, "run_uri": self.run_uri}


def connect_job_server(address: str):
    """A `JobSubmissionClient` whose requests time out (Ray's wait forever on a silent host)."""
    from ray.job_submission import JobSubmissionClient

    class BoundedClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any):
            kwargs.setdefault("timeout", _TIMEOUTS.get(method, _TIMEOUTS["POST"]))
            return super()._do_request(method, endpoint, **kwargs)

    try:
        return BoundedClient(address)
    except Exception as exc:
        from ray.exceptions import AuthenticationError

        hint = ""
        if isinstance(exc, AuthenticationError):
            hint = " (the cluster wants its token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN, or ~/.ray/auth_token)"
        raise InfrastructureError(f"cannot reach the job server at {address}: {one_line(exc)}{hint}") from exc


def submit(
    client: Any,
    spec: JobSpec,
    *,
    address: str,
    submission_id: str | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> SubmittedJob:
    command = entrypoint(spec)
    job_id = submission_id or f"zipmap-{spec.run_id}-{uuid.uuid4().hex[:6]}"
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), **runtime_env.get("env_vars", {})}
    try:
        client.submit_job(
            entrypoint=command,
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata={"run_id": spec.run_id, "run_uri": spec.run_uri},
        )
    except KeyboardInterrupt:
        raise InfrastructureError(
            f"interrupted while submitting; job {job_id} may exist: check `ray job status {job_id} --address {address}`"
        ) from None
    except (ValueError, TypeError) as exc:  # Ray validates the runtime environment before sending it
        raise SpecError(f"invalid runtime environment: {exc}") from exc
    except Exception as exc:
        raise InfrastructureError(f"cannot submit to {address}: {one_line(exc)}") from exc
    return SubmittedJob(address, job_id, spec.run_id, spec.run_uri)


class Follower:
    """Streams a submitted job's log to `out` until the job ends, then says how it ended (an exit code)."""

    def __init__(
        self,
        client: Any,
        job: SubmittedJob,
        *,
        out: TextIO | None = None,
        unreachable_timeout_s: float = 60.0,
        stop_timeout_s: float = 60.0,
        poll_s: float = 2.0,
    ):
        self.client, self.job = client, job
        self.out = out or sys.stderr
        self.unreachable_timeout_s, self.stop_timeout_s, self.poll_s = unreachable_timeout_s, stop_timeout_s, poll_s
        self._printed = 0  # characters of the job's log written to `out` (a reconnected tail starts over)
        self._line = ""  # the unfinished last line
        self._last_line = ""  # the last non-empty line: what a crashed driver said last
        self._reported: int | None = None  # the driver's exit code, as it reported it
        self._tail_complete = False
        self._signals: list[int] = []
        self._lost_since: float | None = None

    def run(self) -> int:
        return asyncio.run(self._follow())

    async def _follow(self) -> int:
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                handled.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not Unix
                pass
        self._tail = asyncio.create_task(self._stream_log())
        try:
            return await self._watch()
        finally:
            self._tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
            for sig in handled:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        self._signals.append(sig)
        self._wake.set()

    async def _watch(self) -> int:
        stop_asked = None
        status = "PENDING"
        while True:
            if len(self._signals) > 1:
                return self._detach(status, "", stopping=stop_asked is not None)
            if self._signals and stop_asked is None:
                stop_asked = time.monotonic()
                await self._ask_to_stop()
            info = await self._job_info()
            if info is not None:
                status = str(info.status)
                if info.status.is_terminal():
                    await self._finish_log()
                    return self._outcome(info)
            if stop_asked is not None and time.monotonic() - stop_asked > self.stop_timeout_s:
                return self._detach(status, f"it did not stop within {self.stop_timeout_s:.0f} s; ")
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _ask_to_stop(self) -> None:
        name = signal.Signals(self._signals[0]).name
        self._note(f"{name}: stopping job {self.job.job_id} (Ctrl-C again to detach and leave it running)")
        try:
            await asyncio.to_thread(self.client.stop_job, self.job.job_id)
        except Exception as exc:
            self._note(f"could not ask the job server to stop job {self.job.job_id}: {one_line(exc)}")

    async def _job_info(self) -> Any:
        """The job's info, or None while the job server does not answer (for at most `unreachable_timeout_s`)."""
        try:
            info = await asyncio.to_thread(self.client.get_job_info, self.job.job_id)
        except Exception as exc:
            now = time.monotonic()
            if self._lost_since is None:
                self._lost_since = now
                self._note(
                    f"cannot reach the job server at {self.job.address} ({one_line(exc)}); "
                    f"trying again for {self.unreachable_timeout_s:.0f} s"
                )
            if now - self._lost_since >= self.unreachable_timeout_s:
                raise InfrastructureError(
                    f"lost the job server at {self.job.address} for {now - self._lost_since:.0f} s; job "
                    f"{self.job.job_id} may still be running and writing to {self.job.run_uri}. "
                    f"{self._commands()}. Do not start another driver for run {self.job.run_id} while it may be live"
                ) from exc
            return None
        if self._lost_since is not None:
            self._note(f"the job server at {self.job.address} answers again")
            self._lost_since = None
        return info

    def _outcome(self, info: Any) -> int:
        job, status, code = self.job, str(info.status), info.driver_exit_code
        if self._signals and status == "STOPPED":
            self._note(
                f"job {job.job_id} stopped; its committed sequences stay in {job.run_uri}. To continue the run, "
                f"submit the same spec with --run-id {job.run_id} (committed sequences are skipped)"
            )
            return 128 + self._signals[0]
        if status == "SUCCEEDED" and self._reported in (0, None):
            self._note(f"job {job.job_id} succeeded: {_MEANING[0]}")
            return 0
        if status == "FAILED" and self._reported in _MEANING and code in (None, self._reported):
            self._note(f"job {job.job_id} ended with exit code {self._reported}: {_MEANING[self._reported]}")
            return self._reported
        if status == "STOPPED":
            reason = "was stopped before it finished"
        else:
            said = self._last_line or next(iter((info.message or "").strip().splitlines()), "")
            reason = f"failed before the pipeline reported a result (driver exit code {code})"
            reason += f": {said[:300]}" if said else ""
        raise InfrastructureError(
            f"job {job.job_id} {reason}. Its run {job.run_id} is unfinished; once the cause is fixed, "
            f"submit the same spec with --run-id {job.run_id} to continue it"
        )

    def _detach(self, status: str, why: str, *, stopping: bool = False) -> int:
        if stopping:  # the second Ctrl-C: the stop asked for by the first goes on without us
            fate = "it is being stopped and may still write to"
        else:
            fate = f"{why}it keeps running on the cluster and writing to"
        self._note(
            f"detached from job {self.job.job_id} ({status}); {fate} {self.job.run_uri}. {self._commands()}. "
            f"Do not start another driver for run {self.job.run_id} "
            f"(resume, or submit --run-id {self.job.run_id}) until it has ended"
        )
        return 128 + self._signals[0]

    def _commands(self) -> str:
        where = f"{self.job.job_id} --address {self.job.address}"
        return f"Follow it with `ray job logs --follow {where}`, stop it with `ray job stop {where}`"

    # -- the log ------------------------------------------------------------------------------

    async def _stream_log(self) -> None:
        while True:
            seen = 0
            try:
                async for chunk in self.client.tail_job_logs(self.job.job_id):
                    skip = min(len(chunk), max(0, self._printed - seen))
                    seen += len(chunk)
                    self._emit(chunk[skip:])
                self._tail_complete = True
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # the job server went away: reconnect; `_watch` decides when to give up
                await asyncio.sleep(self.poll_s)

    async def _finish_log(self) -> None:
        """Let the tail end by itself (it does once the job has ended), else fetch what it missed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._tail), 10)
        if not self._tail_complete:
            with contextlib.suppress(Exception):
                self._emit((await asyncio.to_thread(self.client.get_job_logs, self.job.job_id))[self._printed :])
        if self._line:
            self._take(self._line)
            self._line = ""

    def _emit(self, text: str) -> None:
        if not text:
            return
        self._printed += len(text)
        self.out.write(text)
        self.out.flush()
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:
            self._take(line)

    def _take(self, line: str) -> None:
        line = line.strip()
        if line.startswith(RESULT_MARKER):
            with contextlib.suppress(ValueError):
                self._reported = int(line[len(RESULT_MARKER) :])
        elif line:
            self._last_line = line

    def _note(self, message: str) -> None:
        if self._line:  # do not glue the note to the job's unfinished line
            self.out.write("\n")
        self.out.write(f"[submit] {message}\n")
        self.out.flush()

