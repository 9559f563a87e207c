"""`zipmap-pipeline run|submit|status|resume`.

Exit codes a scheduler can act on: 0 every sequence done, 1 some sequences failed (or are
unfinished), 2 bad spec or usage, 3 infrastructure error (cluster, storage, model loading).
The run summary goes to stdout as JSON; logs and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence

from .errors import InfrastructureError, SpecError
from .spec import REDACTED, StorageSpec, load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
logger = logging.getLogger("pipeline")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return guarded(lambda: args.func(args))


def guarded(command: Callable[[], int]) -> int:
    """Run a command, turning the pipeline's errors into exit codes."""
    try:
        return command()
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InfrastructureError as exc:
        print(f"infrastructure error: {exc}", file=sys.stderr)
        return EXIT_INFRA
    except KeyboardInterrupt:
        print("interrupted; continue with `zipmap-pipeline resume RUN_URI`", file=sys.stderr)
        return EXIT_INFRA
    except Exception:
        traceback.print_exc()
        return EXIT_INFRA


# --- commands --------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from .api import run_job

    spec = load_spec(args.spec, args.overrides).with_run_id(args.run_id)
    logger.info("run %s -> %s", spec.run_id, spec.run_uri)
    summary = run_job(spec, progress=not args.no_progress, retry_failed=args.retry_failed, ray_address=args.address)
    return _report(summary)


def _resume(args: argparse.Namespace) -> int:
    from .api import resume_job

    summary = resume_job(
        args.run_uri,
        storage=_storage(args),
        overrides=args.overrides,
        progress=not args.no_progress,
        retry_failed=args.retry_failed,
        ray_address=args.address,
    )
    return _report(summary)


def _status(args: argparse.Namespace) -> int:
    from .api import run_status

    try:
        summary = run_status(args.run_uri, storage=_storage(args), verify=args.verify)
    except OSError as exc:
        raise InfrastructureError(f"cannot read {args.run_uri}: {exc}") from exc
    if summary.sequences == 0:
        raise SpecError(f"{args.run_uri} has no manifest or commit markers; is it a run folder?")
    return _report(summary)


def _submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    spec = load_spec(args.spec, args.overrides).with_run_id(args.run_id)
    spec_json = json.dumps(spec.model_dump(mode="json"), separators=(",", ":"))
    if REDACTED in spec_json:
        raise SpecError("the spec holds credentials (in a URI); give them to the cluster through its environment")
    entrypoint = f"python -m jobs.reconstruct --spec-json {shlex.quote(spec_json)}"
    runtime_env = (
        {"working_dir": args.working_dir, "excludes": [".venv", ".git", "**/__pycache__"]} if args.working_dir else None
    )
    try:
        client = JobSubmissionClient(args.address)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=args.submission_id or f"zipmap-{spec.run_id}-{uuid.uuid4().hex[:6]}",
            runtime_env=runtime_env,
        )
    except Exception as exc:
        raise InfrastructureError(f"cannot submit to {args.address}: {exc}") from exc
    print(json.dumps({"job_id": job_id, "run_id": spec.run_id, "run_uri": spec.run_uri}))
    if not args.wait:
        return EXIT_OK
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        time.sleep(5)
    sys.stderr.write(client.get_job_logs(job_id))
    info = client.get_job_info(job_id)
    code = getattr(info, "driver_exit_code", None)
    if code is not None:
        return int(code)
    return EXIT_OK if status == JobStatus.SUCCEEDED else EXIT_INFRA


def _report(summary) -> int:
    print(json.dumps(summary.model_dump(mode="json"), indent=2))
    return summary.exit_code


def _storage(args: argparse.Namespace) -> StorageSpec:
    return StorageSpec(endpoint_url=args.endpoint_url, region=args.region)


# --- arguments -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zipmap-pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec field, e.g. --set engine.mode=chunked (repeatable)",
        )

    def driver(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--retry-failed", action="store_true", help="run sequences that failed before again")

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint-url", help="S3 endpoint of the run's store (credentials: environment)")
        p.add_argument("--region", help="S3 region of the run's store")

    p = sub.add_parser("run", help="run a job spec here (local Ray, or RAY_ADDRESS)")
    p.add_argument("spec", help="job spec file (YAML or JSON; path or URL)")
    p.add_argument("--run-id", help="the run's id (default: the spec's, else a new one)")
    overrides(p), driver(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("submit", help="submit a job spec to a Ray cluster's job server")
    p.add_argument("spec", help="job spec file (YAML or JSON; path or URL)")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://head:8265")
    p.add_argument("--run-id")
    p.add_argument("--submission-id", help="Ray job id (default: zipmap-<run_id>-<random>)")
    p.add_argument("--working-dir", help="upload this folder as the job's code (default: the image's)")
    p.add_argument("--wait", action="store_true", help="wait for the job and exit with its exit code")
    overrides(p)
    p.set_defaults(func=_submit)

    p = sub.add_parser("status", help="print a run's summary from its manifest and commit record")
    p.add_argument("run_uri")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also list every commit marker and output: report committed sequences whose outputs are missing",
    )
    store_options(p)
    p.set_defaults(func=_status)

    p = sub.add_parser("resume", help="continue a run from its stored spec")
    p.add_argument("run_uri")
    overrides(p), driver(p), store_options(p)
    p.set_defaults(func=_resume)
    return parser


if __name__ == "__main__":
    sys.exit(main())
