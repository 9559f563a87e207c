"""`zipmap-pipeline export` and `zipmap-pipeline report`: outputs made from a finished run.

    zipmap-pipeline export RUN_URI --format colmap [--format nerfstudio] [--sequences a b]
    zipmap-pipeline export RUN_URI --format '{format: colmap, points: 50000, images: source}'
    zipmap-pipeline report RUN_URI

Both print a JSON summary on stdout (progress on stderr) and exit 0 when every sequence was
written, 1 when some failed, 2 for bad usage, 3 when the store cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import yaml
from tqdm import tqdm

from .errors import PipelineError, SpecError, storage_error
from .spec import StorageSpec


def add_commands(
    sub, store_options: Callable[[argparse.ArgumentParser], None], storage: Callable[[argparse.Namespace], StorageSpec]
) -> None:
    """Register the commands on the CLI's subparsers (`store_options` adds --endpoint-url ...,
    `storage` reads them back)."""
    p = sub.add_parser("export", help="write COLMAP / nerfstudio exports of a finished run's sequences")
    p.add_argument("run_uri")
    p.add_argument(
        "--format", dest="formats", action="append", required=True, metavar="FORMAT",
        help="colmap or nerfstudio, or a YAML mapping with options, e.g. '{format: colmap, points: 50000}' "
        "(repeatable)",
    )
    p.add_argument("--sequences", nargs="+", metavar="ID", help="only these sequences (default: all committed)")
    p.add_argument("--workers", type=int, default=2, help="sequences exported at once (default 2)")
    p.add_argument("--no-progress", action="store_true")
    store_options(p)
    p.set_defaults(func=_export, storage=storage)

    p = sub.add_parser("report", help="write <run>/report.html (and the previews it is missing)")
    p.add_argument("run_uri")
    p.add_argument("--no-previews", action="store_true", help="do not make missing previews (faster)")
    p.add_argument("--workers", type=int, default=2, help="sequences previewed at once (default 2)")
    p.add_argument("--no-progress", action="store_true")
    store_options(p)
    p.set_defaults(func=_report, storage=storage)


def _export(args: argparse.Namespace) -> int:
    from .exports.run import export_run, parse_exports

    formats = parse_exports([_format(f) for f in args.formats])
    with _progress(args, "export") as done:
        storage = args.storage(args)
        result = _guard_store(
            args.run_uri,
            storage,
            lambda: export_run(
                args.run_uri, formats, sequences=args.sequences, storage=storage, workers=args.workers, on_done=done
            ),
        )
    print(json.dumps({"run_uri": args.run_uri.rstrip("/"), "exported": result.done, "failed": result.failed}, indent=2))
    return 1 if result.failed else 0


def _report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    with _progress(args, "previews") as done:
        storage = args.storage(args)
        uri = _guard_store(
            args.run_uri,
            storage,
            lambda: write_report(
                args.run_uri, storage=storage, fill_previews=not args.no_previews, workers=args.workers, on_done=done
            ),
        )
    print(json.dumps({"report": uri}))
    return 0


def _format(value: str):
    """A format name, or a YAML mapping of options."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise SpecError(f"--format {value!r}: cannot parse: {exc}") from None
    return parsed if isinstance(parsed, dict) else value


def _guard_store(run_uri: str, storage: StorageSpec, work: Callable):
    """The work's result; a store that fails us is one line that says why (exit 3)."""
    try:
        return work()
    except PipelineError:
        raise
    except Exception as exc:
        raise storage_error(exc, run_uri, endpoint_url=storage.endpoint_url, doing="use") from exc


class _progress:
    """A tqdm bar on stderr whose `update` is handed to the work as `on_done(sequence_id)`."""

    def __init__(self, args: argparse.Namespace, what: str):
        self._bar = tqdm(unit="seq", desc=what, disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> Callable[[str], None]:
        return lambda _sid: self._bar.update(1)

    def __exit__(self, *exc) -> None:
        self._bar.close()
