"""Error classes that decide what the coordinator does with a failure.

The split matters more than the names: an `InputError` is a property of the data and would fail
again on any machine, so it is never retried; everything else is presumed transient (a lost
node, a flaky store) and retried with backoff; an `InfrastructureError` stops the run because no
amount of retrying a single sequence can fix it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .redaction import redact_text

if TYPE_CHECKING:
    from .manifest import RunSummary


class PipelineError(Exception):
    """Base class of the pipeline's own errors. Their messages never show credentials, whatever
    text (a URI, another library's error) they were built from."""

    def __str__(self) -> str:
        return redact_text(super().__str__())


class SpecError(PipelineError, ValueError):
    """The job spec or the command line is invalid (exit code 2)."""


class InputError(PipelineError, ValueError):
    """A sequence's input is unusable (unreadable, too short, mixed sizes): fail, do not retry."""


class InfrastructureError(PipelineError, RuntimeError):
    """The run cannot proceed (no cluster, store unreachable, model cannot be built) (exit code 3)."""


class ActorInitError(InfrastructureError):
    """A model actor failed to build its model or load the checkpoint."""


class LongSequence(PipelineError):
    """A sequence whose frame count was known only once decoded (a video) is long enough for a gang:
    the pool actor hands it back instead of running it (pipeline.gang_phase). Not a failure."""

    def __init__(self, num_frames: int):
        super().__init__(f"{num_frames} frames: runs on a gang")
        self.num_frames = num_frames

    def __reduce__(self):  # through Ray's pickling with its attribute
        return type(self), (self.num_frames,)


class RunFailedError(PipelineError):
    """A run ended with sequences failed or unfinished; `summary` says which (exit code 1).

    Raised by `run_job` / `resume_job` unless `raise_on_failure=False`, so that a scheduler task
    that calls them fails instead of going green with missing results.
    """

    exit_code = 1

    def __init__(self, summary: RunSummary):
        self.summary = summary
        shown = "; ".join(f"{f['sequence_id']}: {f.get('error') or f.get('error_kind')}" for f in summary.failures[:3])
        more = f" (and {summary.failed - 3} more)" if summary.failed > 3 else ""
        super().__init__(
            f"run {summary.run_id} {summary.status}: {summary.done} of {summary.sequences} sequences done, "
            f"{summary.failed} failed, {summary.pending} unfinished" + (f"; {shown}{more}" if shown else "")
        )

    def __reduce__(self):  # pickle (Ray, Airflow, Prefect) rebuilds it from the summary, not the message
        return type(self), (self.summary,)


# --- storage ---------------------------------------------------------------------------------

_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "Forbidden",
    "403",
}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}
_UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ConnectionError",
    "ConnectionRefusedError",
    "gaierror",
    "TimeoutError",
    "ReadTimeoutError",
}


def storage_error(
    exc: BaseException, uri: str, *, endpoint_url: str | None = None, doing: str = "use"
) -> InfrastructureError:
    """One line a user can act on, for a store that failed us: unreachable endpoint, missing bucket,
    no or wrong credentials. Object store clients bury that under several wrappers (s3fs's OSError
    around botocore's ClientError around aiohttp's errors), so the whole chain is searched."""
    chain = _chain(exc)
    codes = {
        str(e.response.get("Error", {}).get("Code")) for e in chain if isinstance(getattr(e, "response", None), dict)
    }
    names = {type(e).__name__ for e in chain}
    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if protocol in ("s3", "s3a") and "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
        reason = (
            "S3 URIs cannot hold credentials (user:password@): give them to the process in its environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
        )
    elif "NoSuchBucket" in codes:
        bucket = uri.split("://", 1)[-1].split("/", 1)[0]
        reason = f"bucket {bucket!r} does not exist" + (f" at {endpoint_url}" if endpoint_url else "")
    elif names & _NO_CREDENTIALS:
        reason = (
            "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give "
            "the machine a role) in the environment"
        )
    elif codes & _DENIED or (names & {"PermissionError"} and protocol != "file"):
        code = next(iter(sorted(codes & _DENIED)), "PermissionError")
        reason = f"access denied ({code}): check the credentials in the environment and the bucket's permissions"
    elif names & _UNREACHABLE and protocol != "file":
        if endpoint_url:
            reason = f"cannot reach the endpoint {endpoint_url}"
        elif protocol in ("s3", "s3a"):
            reason = (
                "cannot reach AWS S3 (no endpoint set); for MinIO, moto or another S3-compatible store set "
                "storage.endpoint_url (on the command line: --endpoint-url) or AWS_ENDPOINT_URL"
            )
        else:
            reason = f"cannot reach the store ({one_line(exc)})"
    else:
        reason = one_line(exc)
    return InfrastructureError(f"cannot {doing} {uri}: {reason}")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 20:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def one_line(exc: BaseException, limit: int = 400) -> str:
    """`Type: message` on one line: the message's first line, and the next one when the first
    only introduces it ("Parameter validation failed:"), shortened to `limit` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
