"""The pipeline benchmarks run on CPU (smoke checks for the GPU machine)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from zipmap_core.engines.store import PinnedPool

pytestmark = pytest.mark.timeout(240)
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so worker processes find its functions by name
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke(ray_cluster, tmp_path, capsys):
    bench = _load("pipeline_throughput")
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
    assert result["engine"]["median_sequence_s"] > 0 and result["pipeline"]["median_infer_s"] > 0
    assert "s per sequence in the actor" in out
    idle = result["pipeline"]["engine_idle"]  # 3 sequences on one engine: two gaps between them
    assert 0 < idle["busy_share"] <= 1 and 0 <= idle["median_gap_s"] <= idle["max_gap_s"]
    assert "engine idle" in out


def test_frame_handoff_benchmark_smoke(capsys):
    _load("frame_handoff").main(["--writers", "0", "1", "--frames", "4"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows] == [
        ("0", "in process", "idle"), ("0", "in process", "busy"),
        ("1", "files", "idle"), ("1", "files", "busy"), ("1", "pipes", "idle"), ("1", "pipes", "busy"),
    ]
    assert all(float(r[3]) > 0 for r in rows)


def test_voxel_merge_benchmark_smoke(capsys):
    results = _load("voxel_merge").main(["--frames", "3", "--points", "2000", "--voxel-sizes", "0.5", "0.001"])
    coarse, fine = results
    assert coarse["rows_per_frame"] < fine["rows_per_frame"] <= 2000  # coarse voxels: fewer sums per frame
    assert 0 < coarse["voxels"] < fine["voxels"] <= 6000
    assert all(r["writer_s"] > 0 and r["main_thread_s"] > 0 for r in results)
    assert "main thread" in capsys.readouterr().out


def test_scaling_benchmark_smoke(ray_cluster, tmp_path, capsys):
    bench = _load("pipeline_scaling")
    args = ["--preset", "tiny", "--device", "cpu", "--sequences", "3", "--frames", "2", "--cpus-per-actor", "0.5"]
    report = bench.main([*args, "--actors", "1", "2", "--workdir", str(tmp_path)])
    runs = report["runs"]
    assert [r["num_actors"] for r in runs] == [1, 2]
    assert all(r["frames"] == 6 and r["steady_frames_per_s"] > 0 for r in runs)
    assert runs[0]["scaling"] == 1.0 and runs[1]["scaling"] > 0
    assert runs[1]["differences"] == []  # the same outputs whatever the number of actors
    assert "| 2 |" in capsys.readouterr().out


def test_scaling_benchmark_reports_differences():
    import pyarrow as pa

    bench = _load("pipeline_scaling")
    frames = pa.table({"sequence_id": ["a", "a"], "depth_mean": pa.array([1.0, 2.0], pa.float32())})
    base = {"frames": frames, "ply_sha256": {"a": "00", "b": "11"}}
    assert bench._differences(base, base) == []
    moved = frames.set_column(1, "depth_mean", pa.array([1.0, 2.5], pa.float32()))
    found = bench._differences(base, {"frames": moved, "ply_sha256": {"a": "00", "b": "12"}})
    assert found == ["1 PLY file(s) differ, e.g. b", "frames.depth_mean differs (max abs 0.5)"]
    assert bench._differences(base, {"frames": frames.slice(0, 1), "ply_sha256": {"a": "00"}}) == [
        "sequences differ: ['b']",
        "frames tables have 2 and 1 rows",
    ]


def test_coordinator_scale_benchmark_smoke(tmp_path, capsys):
    """A tiny size on both stores, against the baseline commit: every row measured for both versions."""
    results = _load("coordinator_scale").main(
        ["--sizes", "30", "--sample", "20", "--moto-sample", "10", "--workdir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    for version in ("current", "baseline"):
        rows = results[version]
        assert set(rows) == {f"{s}/30/{w}" for s in ("local", "moto") for w in ("driver", "status", "resume start")}
        for store in ("local", "moto"):
            assert rows[f"{store}/30/status"]["done"] >= 30
            assert rows[f"{store}/30/driver"]["cpu_per_seq_ms"] > 0 and rows[f"{store}/30/resume start"]["seconds"] > 0
    assert results["current"]["local/30/driver"]["sequences"] == 30  # this checkout: whole runs on local disk
    assert 20 <= results["baseline"]["local/30/driver"]["sequences"] < 30  # sampled: the first 20 commits (and
    assert 10 <= results["current"]["moto/30/driver"]["sequences"] < 20  # those already in flight)
    assert "| moto | 30 | resume start, s |" in out and "ratio" in out


def test_frame_parallel_benchmark_smoke(tmp_path, monkeypatch):
    """bench/frame_parallel.py on 2 gloo processes with the tiny model: the same table as on 2 GPUs."""
    monkeypatch.syspath_prepend(str(BENCH))  # the spawned processes import the script by its name
    bench = importlib.import_module("frame_parallel")
    args = ["--device", "cpu", "--preset", "tiny", "--frames", "5", "--height", "28", "--width", "42",
            "--newton-schulz", "float32"]
    result = bench.main([*args, "--chunk-size", "2", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    one, two = result["rows"]
    assert (one["frames"], one["gpus"], two["frames"], two["gpus"]) == (5, 1, 5, 2)
    assert one["time_s"] > 0 and len(two["per_process"]) == 2 and all(p["time_s"] > 0 for p in two["per_process"])
    d = two["differences"]  # float32: the 2-process result is the 1-process one up to summation order
    assert d["depth_of_max"] < 1e-4 and d["translation_of_max"] < 1e-4 and d["rotation_deg"] < 1e-2, d
    assert d["depth_max"] > 0
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == result["rows"]
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # the 1-GPU depth maps were cleaned up


def test_exports_benchmark_smoke(ray_cluster, tmp_path, capsys):
    result = _load("exports").main(["--frames", "3", "--size", "112", "--workdir", str(tmp_path)])
    assert set(result["exports"]) == {"colmap", "colmap (text too)", "nerfstudio", "previews"}
    assert all(r["seconds"] > 0 and r["bytes"] > 0 for r in result["exports"].values())
    assert result["exports"]["colmap (text too)"]["bytes"] > result["exports"]["colmap"]["bytes"]
    assert "| colmap |" in capsys.readouterr().out


def test_report_load_benchmark_smoke(ray_cluster, tmp_path, capsys):
    result = _load("report_load").main(["--sequences", "3", "--loads", "1", "--workdir", str(tmp_path)])
    assert result["images"] == 6 and result["load_ms"] > 0 and result["html_bytes"] > 0
    assert "DOMContentLoaded" in capsys.readouterr().out


def test_video_benchmark_smoke(ray_cluster, tmp_path, capsys):
    pytest.importorskip("av")
    bench = _load("video_throughput")
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            ["--preset", "tiny", "--device", "cpu", "--videos", "2", "--frames", "5", "--width", "224",
             "--height", "126", "--size", "112", "--processes", "2", "--workdir", str(tmp_path),
             "--decode-threads", "1", "2", "--variant", "in_flight=2"]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert result["encode"]["frames"] == result["decode"]["frames"] == result["engine"]["frames"] == 10
    assert result["pipeline"]["frames"] == 10 and result["pipeline"]["steady_frames_per_s"] > 0
    settings = result["pipeline"]["settings"]  # what the run ran with: decode CPUs as the run chose them
    assert settings["decode_cpus"] == 1 and settings["decode_cpus_auto"] and settings["in_flight_per_actor"] == 4
    (variant,) = result["variants"]
    assert variant["override"] == {"in_flight": 2} and variant["pipeline"]["settings"]["in_flight_per_actor"] == 2
    assert variant["pipeline"]["frames"] == 10 and variant["ratio"] > 0
    assert [row["threads"] for row in result["decode_scaling"]] == [1, 2]
    assert all(row["identical"] and row["frames"] == 5 for row in result["decode_scaling"])
    assert result["decode"]["frames_per_core_s"] > 0 and result["decode_cores_per_gpu"] > 0
    steps = result["decode_breakdown_ms"]
    assert 0 < steps["ffmpeg decode"] <= steps["+ RGB"] <= steps["+ resize"]
    assert "ratio pipeline / engine" in out and "decode cores per GPU" in out
    assert "decode_cpus 1 (auto), in flight 4" in out and "[in_flight=2] ratio" in out


def test_state_query_benchmark_smoke(capsys):
    bench = _load("state_query")
    args = ["--preset", "tiny_state_query", "--device", "cpu", "--height", "28", "--width", "42", "--frames", "2"]
    results = bench.main([*args, "--views", "2", "--batch-sizes", "1", "2", "--repeats", "1", "--dtype", "float32"])
    (row,) = results["sequences"]
    assert row["state_mib"]["float32"] == 2 * row["state_mib"]["bfloat16"] == 4 * 3 * 32 * 64 * 4 / 2**20
    assert row["file_mib_float32"] > row["state_mib"]["float32"] > row["file_mib_bfloat16"]
    assert all(row["render_s_per_view"][b] > 0 for b in (1, 2)) and row["recompute_over_from_state"] > 0
    assert row["max_rgb_difference"] < 1e-4  # from the state and recomputed: the same views
    assert "recompute / from state" in capsys.readouterr().out


def test_engine_auto_benchmark_smoke(capsys):
    """bench/engine_auto.py end to end on the CPU: the default spec resolved and measured beside
    the manual candidates, the ratio and the compile rule printed (GPU numbers: the lead's run)."""
    results = _load("engine_auto").main([
        "--device", "cpu", "--preset", "tiny", "--frames", "3", "5", "--height", "56", "--width", "84",
        "--no-compile", "--payback-frames", "3", "--repeats", "1", "--chunk-size", "2",
    ])
    assert [r["frames"] for r in results["rows"]] == [3, 5]
    for row in results["rows"]:
        assert row["default_engine"]["mode"] == "offline" and row["default_engine"]["dtype"] == "float32"
        assert row["offline"]["frames"] == row["chunked"]["frames"] == row["default"]["frames"] == row["frames"]
        assert row["ratio"] > 0
    out = capsys.readouterr().out
    assert "default / best" in out and "compile rule" in out


def test_commit_record_benchmark_smoke(capsys):
    results = _load("commit_record_scale").main(["--sizes", "20", "100", "--repeat", "1"])
    assert [row["n"] for row in results["local"]] == [row["n"] for row in results["moto"]] == [20, 100]
    for rows in results.values():
        for row in rows:
            for key in ("status_old", "status_new", "verify_new", "resume_old", "resume_new"):
                assert row[key][0] > 0 and row[key][1] >= 0, (key, row)
    out = capsys.readouterr().out
    assert "status before" in out and "moto over HTTP" in out


def test_streaming_latency_benchmark_smoke(capsys):
    """Tiny model on the CPU: every variant's statistics, the offline reference, and the graphed
    stream's static-buffer step (run eagerly off CUDA) giving the eager stream's predictions."""
    bench = _load("streaming_latency")
    results = bench.main([
        "--preset", "tiny", "--window", "1", "--device", "cpu", "--height", "56", "--width", "84",
        "--frames", "7", "--float32-frames", "5", "--settle", "2", "--variants", "float32", "fast", "fast+graph",
        "--offline", "fast", "--offline-repeats", "1",
    ])
    rows = results["streaming"]
    assert set(rows) == {"float32", "fast", "fast+graph"}
    assert rows["float32"]["frames"] == 5 and rows["fast"]["frames"] == rows["fast+graph"]["frames"] == 7
    for row in rows.values():
        assert 0 < row["median_ms"] <= row["p99_ms"] <= row["max_ms"] and row["frames_per_s"] > 0
        assert len(row["first_frames_ms"]) == 2
    assert results["offline"]["fast"]["frames_per_s"] > 0
    assert rows["fast+graph"]["capture_s"] is not None  # frames 2.. ran the static-buffer step
    same = results["graph_vs_eager"]["fast+graph"]
    assert same["frames"] == 7 and same["depth_of_max"] < 1e-3 and same["extrinsic_max_abs"] < 1e-3, same
    assert "| fast+graph |" in capsys.readouterr().out


def test_fp8_benchmark_smoke(capsys):
    """Tiny model on the CPU (FP8 products computed in float32 there): every table's rows."""
    results = _load("fp8").main([
        "--preset", "tiny", "--device", "cpu", "--frames", "3", "--height", "56", "--width", "84",
        "--repeats", "1", "--gemm-tokens", "32",
    ])
    full = results["full_size"]
    assert set(full["timings"]) == {"float32", "bf16", "fp8"}
    assert all(t["time_s"] > 0 for t in full["timings"].values())
    for name in ("bf16", "fp8"):
        assert 0 < full["errors_vs_float32"][name]["depth"] < 0.05
    assert full["fp8_vs_bf16"]["depth"] > 0  # FP8 really ran
    assert set(results["trained_demo"]) == {"autocast_bf16", "bf16", "fp8"}
    assert set(results["gemm"]) == {"1024->4096", "4096->1024"}
    out = capsys.readouterr().out
    assert "| fp8 |" in out and "GEMMs alone" in out


def test_cost_benchmark_smoke(tmp_path, capsys):
    rows = _load("cost").main(
        ["--presets", "tiny", "--frames", "2", "4", "--height", "28", "--width", "28", "--device", "cpu",
         "--threads", "1", "--repeats", "2", "--json", str(tmp_path / "cost.json")]
    )
    assert [(r["model"], r["frames"]) for r in rows] == [("tiny", 2), ("tiny", 4)]
    assert all(r["seconds"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert json.loads((tmp_path / "cost.json").read_text())["rows"] == rows
    assert "from 2 to 4 frames (x2): tiny time x" in capsys.readouterr().out


@pytest.mark.slow
def test_long_sequences_benchmark_smoke(tmp_path, capsys, monkeypatch):
    """bench/long_sequences.py on the CPU with the tiny model: old and new store, one table."""
    monkeypatch.syspath_prepend(str(BENCH))  # it imports bench/timing.py by name
    result = _load("long_sequences").main(
        ["--device", "cpu", "--preset", "tiny", "--height", "28", "--width", "42", "--chunk-size", "2",
         "--frames", "3", "--old-frames", "3", "--on-demand-frames", "4", "--repeats", "2",
         "--json", str(tmp_path / "r.json")]
    )
    old, new, on_demand = result["runs"]
    assert [(r["variant"], r["frames"]) for r in result["runs"]] == [("old", 3), ("new", 3), ("on-demand", 4)]
    assert all(r["first_s"] > 0 and r["warm_s"] > 0 and r["frames_per_s"] > 0 for r in (old, new))
    assert PinnedPool.pin_ahead.__name__ == "pin_ahead"  # the on-demand runs' switch is undone
    assert json.loads((tmp_path / "r.json").read_text())["runs"] == result["runs"]
    assert "| 3 | new |" in capsys.readouterr().out


def test_gpu_idle_report_merges_overlapping_kernels_and_finds_the_gaps(monkeypatch):
    """bench/gpu_idle.py's arithmetic (its profile needs CUDA): kernel intervals in ns, overlapping
    ones merged, idle per tenth of the span, the longest gaps with the kernels on either side."""
    monkeypatch.syspath_prepend(str(BENCH))
    report = _load("gpu_idle").idle_report
    ms = 1_000_000
    kernels = [(0, 10 * ms, "a"), (5 * ms, 20 * ms, "b"), (2 * ms, 3 * ms, "inside"), (80 * ms, 90 * ms, "c"),
               (92 * ms, 100 * ms, "d")]
    r = report(kernels, wall_s=0.105)
    assert r["kernel_span_s"] == pytest.approx(0.100) and r["busy_s"] == pytest.approx(0.038)
    assert r["idle_in_span_s"] == pytest.approx(0.062) and r["outside_span_s"] == pytest.approx(0.005)
    assert r["idle_per_tenth_s"] == [0.0, 0.0, 0.06, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.002]  # gaps by start
    assert r["gaps_over_1ms"] == 2 and r["idle_in_gaps_over_1ms_s"] == pytest.approx(0.062)
    assert [(g["after"], g["before"], g["ms"]) for g in r["longest"]] == [("b", "c", 60.0), ("c", "d", 2.0)]
