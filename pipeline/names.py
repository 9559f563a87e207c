"""Names that become parts of paths: run ids, sequence ids, attempt ids.

They come from outside (the command line, a spec, the Python API, input folder names, manifest
rows) and end up as one path segment each under `<output>/<run_id>/`. Every one of them is
checked here, by one rule, before a path is built from it, so no value can reach a parent
folder, an absolute path or another run.
"""

from __future__ import annotations

import re

from .errors import SpecError

# One path segment: no separators, no leading dot (so neither "." nor ".."), nothing a shell,
# URL or hive partition would read specially.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")


def check_name(value: object, what: str) -> str:
    """`value` if it is a safe single path segment; else SpecError naming `what` it was."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return value
    raise SpecError(
        f"{what} {value!r} is not a safe name: use 1-200 characters from [A-Za-z0-9._-], not starting with '.' or '-'"
    )


def check_run_id(run_id: object) -> str:
    return check_name(run_id, "run_id")
