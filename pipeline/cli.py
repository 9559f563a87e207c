"""`zipmap-pipeline run|submit|status|resume|render|render-batch|export|report`.

Exit codes a scheduler can act on: 0 every sequence done, 1 some sequences failed (or are
unfinished), 2 bad spec or usage, 3 infrastructure error (cluster, storage, model loading).
The run summary goes to stdout as JSON; logs and the progress bar go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence

from .errors import InfrastructureError, PipelineError, SpecError, one_line
from .logs import configure_logging
from .output_commands import add_commands
from .redaction import get_logger, redact_text
from .spec import StorageSpec, load_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
logger = get_logger("pipeline")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, fmt=args.log_format)
    return guarded(lambda: args.func(args), verbose=args.verbose)


def guarded(command: Callable[[], int], *, verbose: bool = False) -> int:
    """Run a command, turning errors into exit codes and one-line messages (the traceback with -v)."""
    try:
        return command()
    except SpecError as exc:
        return _failed(exc, "error", EXIT_USAGE, verbose)
    except InfrastructureError as exc:
        return _failed(exc, "infrastructure error", EXIT_INFRA, verbose)
    except KeyboardInterrupt:
        print("interrupted; continue with `zipmap-pipeline resume RUN_URI`", file=sys.stderr)
        return EXIT_INFRA
    except Exception as exc:
        return _failed(exc, "unexpected error", EXIT_INFRA, verbose)


def _failed(exc: Exception, label: str, code: int, verbose: bool) -> int:
    if verbose:
        sys.stderr.write(redact_text("".join(traceback.format_exception(exc))))
    message = str(exc) if isinstance(exc, PipelineError) else redact_text(one_line(exc))
    hint = "" if verbose or isinstance(exc, SpecError) else " (-v shows the traceback)"
    print(f"{label}: {message}{hint}", file=sys.stderr)
    return code


# --- commands --------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from .api import run_job

    storage = _storage(args)
    spec = load_spec(args.spec, args.overrides, storage_options=storage.for_uri(args.spec))
    spec = spec.with_storage_default(storage).with_run_id(args.run_id)
    logger.info("run %s -> %s", spec.run_id, spec.run_uri)
    summary = run_job(
        spec,
        progress=not args.no_progress,
        retry_failed=args.retry_failed,
        ray_address=args.address,
        raise_on_failure=False,  # the exit code says it
    )
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
        raise_on_failure=False,
    )
    return _report(summary)


def _status(args: argparse.Namespace) -> int:
    from .api import run_status

    summary = run_status(args.run_uri, storage=_storage(args), verify=args.verify)
    if summary.sequences == 0 and summary.driver is None:
        raise SpecError(f"{args.run_uri} has no manifest or commit markers; is it a run folder?")
    driver = summary.driver
    if driver is not None and driver["state"] == "running":
        logger.info(
            "run %s is running: driver on host %s, pid %s, since %s; last heartbeat %.0fs ago",
            summary.run_id, driver["host"], driver["pid"], driver["since"], driver["heartbeat_age_s"],
        )
    elif driver is not None and driver["state"] == "dead":
        logger.warning(
            "run %s: its driver (host %s, pid %s) is dead: no heartbeat for %.0fs; continue with "
            "`zipmap-pipeline resume %s`", summary.run_id, driver["host"], driver["pid"], driver["heartbeat_age_s"],
            args.run_uri,
        )
    return _report(summary)


def _submit(args: argparse.Namespace) -> int:
    from .submission import Follower, connect_job_server, runtime_env, submit

    spec = load_spec(args.spec, args.overrides).with_run_id(args.run_id)
    env = runtime_env(args.runtime_env, env=args.env, pip=args.pip, working_dir=args.working_dir)
    client = connect_job_server(args.address)
    job = submit(client, spec, address=args.address, submission_id=args.submission_id, runtime_env=env)
    print(json.dumps(job.as_dict()), flush=True)
    if not args.wait:
        logger.info("follow it with `ray job logs --follow %s --address %s`", job.job_id, args.address)
        return EXIT_OK
    return Follower(client, job, unreachable_timeout_s=args.unreachable_timeout).run()


def _render(args: argparse.Namespace) -> int:
    """One sequence's novel views from its stored scene state, here (no Ray)."""
    from zipmap_core.scene_state import SceneStateError

    from .errors import InputError
    from .rendering import render_sequence

    request = _camera_request(args)
    try:
        record = render_sequence(
            args.run_uri,
            args.sequence,
            request,
            out=args.out,
            storage=_storage(args),
            device=args.device,
            batch_size=args.batch_size,
            dtype=args.dtype,
            fps=args.fps,
            checkpoint=args.checkpoint,
        )
    except (InputError, SceneStateError, FileNotFoundError) as exc:
        raise SpecError(str(exc)) from None
    print(json.dumps(record, indent=2))
    return EXIT_OK


def _render_batch(args: argparse.Namespace) -> int:
    """Many sequences' novel views on a Ray cluster (pipeline.render_job)."""
    from .render_job import load_render_spec, run_render_job

    job = {
        "run": args.run_uri,
        "cameras": _camera_request(args).model_dump(exclude_none=True),
        "sequences": args.sequences,
        "output": args.out,
        "overwrite": args.overwrite,
        "checkpoint": args.checkpoint,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "fps": args.fps,
        "num_actors": args.num_actors,
        "cpus_per_actor": args.cpus_per_actor,
        "device": args.device,
        "storage": _storage(args).model_dump(mode="json"),
    }
    summary = run_render_job(load_render_spec(job), ray_address=args.address)
    print(json.dumps(summary, indent=2))
    return EXIT_OK if not summary["failed"] else EXIT_FAILED


def _camera_request(args: argparse.Namespace):
    from pydantic import ValidationError

    from .rendering import CameraRequest

    try:
        return CameraRequest(
            file=args.cameras, orbit=args.orbit, orbit_radius=args.orbit_radius, interpolate=args.interpolate
        )
    except ValidationError as exc:
        raise SpecError("; ".join(e["msg"] for e in exc.errors())) from None


def _add_render_commands(sub, store_options: Callable[[argparse.ArgumentParser], None]) -> None:
    def views(p: argparse.ArgumentParser) -> None:
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--cameras", metavar="JSON", help="camera file (path or URL; see docs/pipeline.md)")
        which.add_argument("--orbit", type=int, metavar="N", help="N views on a circle around the input cameras")
        which.add_argument(
            "--interpolate",
            type=int,
            nargs="?",
            const=8,
            metavar="STEPS",
            help="a path through the input cameras, STEPS views from each to the next (default 8)",
        )
        p.add_argument("--orbit-radius", type=float, help="orbit radius (default: the input cameras' spread)")
        p.add_argument("--out", help="output folder or URL (default: RUN_URI/renders/SEQUENCE)")
        p.add_argument("--checkpoint", help="the run's model checkpoint, if it moved since the run")
        p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
        p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
        p.add_argument("--batch-size", type=int, default=8, help="views per pass on the device")
        p.add_argument("--fps", type=int, default=24, help="frame rate of the MP4s")
        store_options(p)

    p = sub.add_parser("render", help="render novel views of one sequence from its stored scene state")
    p.add_argument("run_uri")
    p.add_argument("sequence", help="sequence id")
    views(p)
    p.set_defaults(func=_render)

    p = sub.add_parser("render-batch", help="render novel views of many sequences of a run on Ray")
    p.add_argument("run_uri")
    p.add_argument("--sequences", nargs="+", metavar="ID", help="default: every sequence with a scene state")
    p.add_argument("--overwrite", action="store_true", help="re-render sequences that have a render.json")
    p.add_argument("--num-actors", type=int, help="default: one per GPU, or 1 on CPU")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument(
        "--address",
        help="the Ray cluster to join: HOST:PORT, ray://HOST:PORT or auto (default: RAY_ADDRESS, else a new local Ray)",
    )
    views(p)
    p.set_defaults(func=_render_batch)


def _report(summary) -> int:
    print(json.dumps(summary.model_dump(mode="json"), indent=2))
    return summary.exit_code


def _storage(args: argparse.Namespace) -> StorageSpec:
    return StorageSpec(endpoint_url=args.endpoint_url, region=args.region)


# --- arguments -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zipmap-pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="json: one JSON object per log line"
    )
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
        p.add_argument(
            "--address",
            help="the Ray cluster to join: HOST:PORT, ray://HOST:PORT, or auto (the one `ray start` left on this "
            "machine); default: RAY_ADDRESS, else a new local Ray for this run",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--retry-failed", action="store_true", help="run sequences that failed before again")

    def store_options(p: argparse.ArgumentParser, where: str = "the run") -> None:
        p.add_argument("--endpoint-url", help=f"S3 endpoint (MinIO, moto, ...) of {where}; credentials: environment")
        p.add_argument("--region", help=f"S3 region of {where}")

    p = sub.add_parser("run", help="run a job spec here (a local Ray of its own, or the cluster named by --address)")
    p.add_argument("spec", help="job spec file (YAML or JSON; path or URL)")
    p.add_argument("--run-id", help="the run's id (default: the spec's, else a new one)")
    overrides(p), driver(p), store_options(p, "the spec file, and of the run unless the spec sets storage")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "submit",
        help="submit a job spec to a Ray cluster's job server",
        description="Submit a job spec to a Ray cluster's job server. With --wait, stream the job's log until it "
        "ends and exit with the run's code (0 done, 1 some sequences failed, 2 bad spec, 3 infrastructure: the "
        "job could not run or the job server was lost). Ctrl-C (or SIGTERM) stops the job; a second Ctrl-C "
        "detaches without waiting for the stop (exit 130, or 143 for SIGTERM).",
    )
    p.add_argument("spec", help="job spec file (YAML or JSON; path or URL)")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://head:8265")
    p.add_argument("--run-id", help="the run's id (default: the spec's, else a new one); reuse one to continue it")
    p.add_argument("--submission-id", help="Ray job id (default: zipmap-<run_id>-<random>)")
    p.add_argument("--working-dir", help="upload this folder as the job's code (default: the image's)")
    p.add_argument("--runtime-env", help="Ray runtime environment: a YAML/JSON file, or JSON text")
    p.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable of the job (repeatable)"
    )
    p.add_argument("--pip", action="append", default=[], metavar="PACKAGE", help="pip package for the job (repeatable)")
    p.add_argument("--wait", action="store_true", help="stream the job's log and exit with the run's exit code")
    p.add_argument(
        "--unreachable-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --wait: give up (exit 3) when the job server does not answer for this long (default 60)",
    )
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

    _add_render_commands(sub, store_options)
    add_commands(sub, store_options, _storage)  # export, report
    return parser


if __name__ == "__main__":
    sys.exit(main())
