"""Ray job entrypoint: `python -m jobs.reconstruct --spec SPEC.yaml [--set k=v ...]`.

Run by `ray job submit` (or `zipmap-pipeline submit`) on the cluster's head node, where
RAY_ADDRESS is set, so the pipeline joins the cluster instead of starting a local Ray. The exit
code follows `zipmap-pipeline run` (0 done, 1 some failed, 2 bad spec, 3 infrastructure), and the
last line of the log says it (`zipmap-pipeline driver exit code: N`): `submit --wait` trusts the
job's exit code only with that line, since Python itself exits 1 when this module cannot even be
imported. SIGTERM (what `ray job stop` sends) stops the run like Ctrl-C: in-flight work is
cancelled and the manifest written before the driver exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from pipeline.cli import guarded
from pipeline.logs import configure_logging
from pipeline.submission import result_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.reconstruct", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="job spec file (YAML or JSON; path or URL)")
    source.add_argument("--spec-json", help="the job spec itself, as JSON")
    source.add_argument("--resume", metavar="RUN_URI", help="continue this run from its stored spec")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--progress", action="store_true", help="also write periodic progress lines")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs, and tracebacks of errors")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one object per line")
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, fmt=args.log_format)
    signal.signal(signal.SIGTERM, _interrupt)
    code = guarded(lambda: _reconstruct(args), verbose=args.verbose)
    print(result_line(code), flush=True)
    return code


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _reconstruct(args: argparse.Namespace) -> int:
    from pipeline.api import resume_job, run_job
    from pipeline.spec import load_spec

    options = {"progress": args.progress, "retry_failed": args.retry_failed, "raise_on_failure": False}
    if args.resume:
        summary = resume_job(args.resume, overrides=args.overrides, **options)
    else:
        source = json.loads(args.spec_json) if args.spec_json else args.spec
        summary = run_job(load_spec(source, args.overrides).with_run_id(), **options)
    print(json.dumps(summary.model_dump(mode="json"), indent=2))
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
