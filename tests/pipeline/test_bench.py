"""The throughput benchmark runs on CPU with the tiny preset (a smoke check for the GPU machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.timeout(240)
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "pipeline_throughput.py"


def test_benchmark_smoke(ray_cluster, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pipeline_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            ["--preset", "tiny", "--device", "cpu", "--sequences", "3", "--frames", "2", "--workdir", str(tmp_path)]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "engine alone" in out and "ratio" in out
    assert result["engine"]["frames"] == result["pipeline"]["frames"] == 6
    assert result["engine"]["frames_per_s"] > 0 and result["pipeline"]["steady_frames_per_s"] > 0
