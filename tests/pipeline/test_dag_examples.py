"""The scheduler examples of docs/pipeline.md ("Scheduling runs"), taken from the document itself.

`reconstruction.py` (the task bodies) runs as written, on a real run with an unusable capture.
The Airflow and Prefect files need their frameworks, which the tests do not install: they are
compiled and checked to call the functions tested here, so a renamed function breaks this test.
"""

from __future__ import annotations

import ast
import json
import re
import types
from pathlib import Path

import pytest
import yaml

from pipeline import RunFailedError

from .conftest import make_spec, write_sequence

DOC = Path(__file__).resolve().parents[2] / "docs" / "pipeline.md"


def doc_files() -> dict[str, str]:
    """The document's Python blocks that name a file on their first line (`# name.py`), by name."""
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {name: code for name, code in blocks}


def test_the_doc_has_the_three_files():
    assert set(doc_files()) == {
        "reconstruction.py",
        "dags/nightly_reconstruction.py",
        "flows/nightly_reconstruction.py",
    }


def test_task_functions_fail_on_failed_sequences_and_tolerate_when_asked(ray_cluster, tiny_checkpoint, tmp_path):
    module = types.ModuleType("reconstruction")
    exec(compile(doc_files()["reconstruction.py"], "docs/pipeline.md:reconstruction.py", "exec"), module.__dict__)
    write_sequence(tmp_path / "in" / "good", 2, seed=1)
    (tmp_path / "in" / "unusable").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "in" / "unusable" / name).write_bytes(b"not a png")
    spec_uri = tmp_path / "nightly.yaml"
    spec = make_spec(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    spec_uri.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True)))

    with pytest.raises(RunFailedError) as caught:  # the scheduler's task fails ...
        module.reconstruct(str(spec_uri), run_id="nightly-2025-01-01")
    summary = caught.value.summary  # ... and says why
    assert (summary.done, summary.failed, summary.pending) == (1, 1, 0)
    assert summary.failures[0]["sequence_id"] == "unusable" and "a.png" in str(caught.value)

    # a retry of the task continues the same run: nothing runs again, the tolerant variant accepts it
    result = module.reconstruct_tolerating(str(spec_uri), run_id="nightly-2025-01-01", max_failed_fraction=0.5)
    assert json.loads(json.dumps(result))["done"] == 1  # JSON data, as XComs and results need
    assert result["run_uri"] == str(tmp_path / "out" / "nightly-2025-01-01")
    with pytest.raises(RunFailedError):
        module.reconstruct_tolerating(str(spec_uri), run_id="nightly-2025-01-01", max_failed_fraction=0.01)


@pytest.mark.parametrize(
    ("name", "framework", "function"),
    [
        ("dags/nightly_reconstruction.py", "airflow.sdk", "reconstruct"),
        ("flows/nightly_reconstruction.py", "prefect", "reconstruct_tolerating"),
    ],
)
def test_scheduler_files_compile_and_call_the_tested_functions(name, framework, function):
    tree = ast.parse(doc_files()[name])
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("reconstruction", function) in imports
    assert any(module == framework for module, _ in imports)
    assert function in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}  # used, not just imported
    compile(tree, name, "exec")
