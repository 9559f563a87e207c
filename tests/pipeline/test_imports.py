"""What frame-writer processes and spec parsing import must not pull in torch (~1 s, ~200 MB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_writers_and_specs_load_without_torch():
    code = (
        "import sys\n"
        "import pipeline.outputs, pipeline.overlap, pipeline.spec\n"
        "from zipmap_core import EngineConfig, FramePrediction, ModelConfig\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from zipmap_core import reconstruct\n"
        "assert 'torch' in sys.modules and callable(reconstruct)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
