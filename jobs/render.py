"""Ray job entrypoint of the render job: `python -m jobs.render --spec RENDER.yaml [--set k=v ...]`.

Renders novel views of many sequences of a run from their stored scene states
(`pipeline.render_job`; the spec's fields are `RenderJobSpec`'s). Run by `ray job submit` on the
cluster's head node (RAY_ADDRESS is set, so it joins the cluster). Exit codes: 0 every sequence
rendered, 1 some failed, 2 bad spec, 3 infrastructure error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pipeline.cli import EXIT_FAILED, EXIT_OK, guarded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.render", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="render job spec file (YAML or JSON; path or URL)")
    source.add_argument("--spec-json", help="the render job spec itself, as JSON")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return guarded(lambda: _render(args))


def _render(args: argparse.Namespace) -> int:
    from pipeline.render_job import load_render_spec, run_render_job

    source = json.loads(args.spec_json) if args.spec_json else args.spec
    summary = run_render_job(load_render_spec(source, args.overrides))
    print(json.dumps(summary, indent=2))
    return EXIT_OK if not summary["failed"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
