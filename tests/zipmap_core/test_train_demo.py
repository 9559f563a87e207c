"""bench/train_demo.py on CPU at toy size: one model per process trains exactly as in lockstep (so
the two demo models can train on two GPUs and still see the same batches), and a preset update
changes both models of the run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from zipmap_core.config import PRESETS, ModelConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
BENCH = Path(__file__).resolve().parents[2] / "bench"
TOY = ["--device", "cpu", "--steps", "2", "--size", "28", "--frames-per-batch", "4", "--max-frames", "2",
       "--pool-size", "2", "--pool-frames", "3", "--warmup-steps", "1", "--log-every", "1"]


@pytest.fixture
def train_demo(monkeypatch):
    for name in ("demo_ttt", "demo_attention"):  # --preset-update changes them: restore after the test
        monkeypatch.setitem(PRESETS, name, PRESETS[name])
    spec = importlib.util.spec_from_file_location("train_demo", BENCH / "train_demo.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_demo", module)
    spec.loader.exec_module(module)
    return module


def test_a_model_trained_alone_equals_its_lockstep_twin(train_demo, tmp_path):
    update = ["--preset-update", "patch_positions=true", "layer_scale_init=0.1"]
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert train_demo.main([*TOY, *update, "--out-dir", str(both), "--eval-sequences", "1", "--eval-frames", "2"]) == 0
    assert train_demo.main([*TOY, *update, "--out-dir", str(alone), "--models", "demo_ttt",
                            "--eval-sequences", "0"]) == 0
    a = safetensors.torch.load_file(str(both / "demo_ttt.safetensors"))
    b = safetensors.torch.load_file(str(alone / "demo_ttt.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (alone / "demo_attention.safetensors").exists()
    runs = json.loads((alone / "results.json").read_text())["runs"]
    assert list(runs) == ["demo_ttt"] and runs["demo_ttt"]["steps"] == 2
    summary = json.loads((both / "results.json").read_text())["summary"]
    rows = {"demo_ttt", "demo_attention", "trivial", "demo_ttt network cameras", "demo_attention network cameras"}
    assert set(summary) == rows
    # one forward pass, two camera sources: the same depth, other cameras
    assert summary["demo_ttt"]["depth_abs_rel"] == summary["demo_ttt network cameras"]["depth_abs_rel"]
    assert summary["demo_ttt"]["ate"] != summary["demo_ttt network cameras"]["ate"]
    # the update reached the models: layer scales start at 0.1 (a step of lr 8e-4 moves them little)
    gamma = a["aggregator.frame_blocks.0.ls1.gamma"].float()
    assert (gamma - 0.1).abs().max() < 0.01
    assert PRESETS["demo_ttt"].patch_positions and PRESETS["demo_attention"].layer_scale_init == 0.1
    meta = safetensors.safe_open(str(both / "demo_ttt.safetensors"), "pt").metadata()
    assert meta["preset"] == "demo_ttt"
    # the file says which configuration it was trained as, --preset-update included
    trained_as = ModelConfig.model_validate_json(meta["model_config"])
    assert trained_as == PRESETS["demo_ttt"] and trained_as.patch_positions and trained_as.layer_scale_init == 0.1

    # --init-dir: both models fine-tune their own file of an earlier run (a continuation that needs
    # only the two float16 files, not the training state)
    tuned = tmp_path / "tuned"
    assert train_demo.main([*TOY, *update, "--steps", "1", "--init-dir", str(both), "--out-dir", str(tuned),
                            "--eval-sequences", "0"]) == 0
    for name in ("demo_ttt", "demo_attention"):
        start = safetensors.torch.load_file(str(both / f"{name}.safetensors"))
        after = safetensors.torch.load_file(str(tuned / f"{name}.safetensors"))
        step = max((after[k].float() - start[k].float()).abs().max().item() for k in start)
        assert 0 < step < 0.01, (name, step)  # one small step away from the file it started from


def test_the_demo_set_is_the_demos_own(train_demo):
    specs = train_demo.held_out_set(train_demo.parse_args(["--steps", "1"]), demo=True)
    assert [s["seed"] for s in specs] == list(range(900_000, 900_009))
    assert {(s["scene"], s["trajectory"]) for s in specs} == {
        (scene, path) for scene in ("room", "objects", "terrain") for path in ("orbit", "walkthrough", "forward")
    }
    assert {(s["num_frames"], s["height"], s["width"]) for s in specs} == {(8, 168, 224)}


def test_training_curves_continue_across_resumed_and_fine_tuning_runs(tmp_path):
    """bench/plot_training.py: a resumed run goes on counting steps; a fine-tuning run (--init-dir)
    counts from 0 again and is drawn after the run whose files it started from."""
    spec = importlib.util.spec_from_file_location("plot_training", BENCH / "plot_training.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)

    def run(name: str, init_dir: str | None, steps: list[int]) -> str:
        path = tmp_path / f"{name}.json"
        history = [{"step": s, "loss": float(s)} for s in steps]
        path.write_text(json.dumps({"args": {"init_dir": init_dir}, "runs": {"demo_ttt": {"history": history}}}))
        return str(path)

    paths = [run("first", None, [50, 100]), run("resumed", None, [150, 200]), run("tuned", "first/", [50, 100])]
    curves, starts = plot.histories(paths)
    assert [e["step"] for e in curves["demo_ttt"]] == [50, 100, 150, 200, 250, 300]
    assert [e["loss"] for e in curves["demo_ttt"]] == [50.0, 100.0, 150.0, 200.0, 50.0, 100.0]
    assert starts == [200]


def test_adopted_files_carry_their_configuration_and_history_and_refuse_mismatches(tmp_path):
    """bench/adopt_demo_files.py: the weights unchanged, the metadata completed; a run trained as
    another configuration, or two models at unequal steps, are refused."""
    spec = importlib.util.spec_from_file_location("adopt_demo_files", BENCH / "adopt_demo_files.py")
    adopt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adopt)
    final, out = tmp_path / "final", tmp_path / "assets"
    final.mkdir()
    out.mkdir()
    weights = {"w": torch.arange(4, dtype=torch.float16)}
    for name in ("demo_ttt", "demo_attention"):
        meta = {"preset": name, "steps": "3"}
        safetensors.torch.save_file(weights, str(final / f"{name}.safetensors"), metadata=meta)

    def results(name: str, steps: dict[str, int], update: list[str], init: str | None = None) -> str:
        runs = {m: {"steps": s, "seconds": 1.5, "history": []} for m, s in steps.items()}
        args = {"preset_update": update, "init_dir": init, "lr": 1e-3, "steps": max(steps.values()), "seed": 0}
        (tmp_path / name).write_text(json.dumps({"args": args, "runs": runs}))
        return str(tmp_path / name)

    first = results("first.json", {"demo_ttt": 2, "demo_attention": 2}, ["patch_positions=true"])
    second = results("second.json", {"demo_ttt": 3, "demo_attention": 3}, [], init="first/")
    assert adopt.main([str(final), first, second, "--out-dir", str(out)]) == 0
    for name in ("demo_ttt", "demo_attention"):
        path = str(out / f"{name}.safetensors")
        assert torch.equal(safetensors.torch.load_file(path)["w"], weights["w"])
        meta = safetensors.safe_open(path, "pt").metadata()
        assert ModelConfig.model_validate_json(meta["model_config"]) == PRESETS[name]
        assert meta["steps"] == "5" and meta["seconds"] == "3.0" and meta["preset"] == name
        assert [r["steps"] for r in json.loads(meta["runs"])] == [2, 3]

    other = results("other.json", {"demo_ttt": 3, "demo_attention": 3}, ["value_rope=true"])
    with pytest.raises(SystemExit, match="was trained as"):
        adopt.main([str(final), first, other, "--out-dir", str(out)])
    uneven = results("uneven.json", {"demo_ttt": 3, "demo_attention": 4}, [])
    with pytest.raises(SystemExit, match="different steps"):
        adopt.main([str(final), first, uneven, "--out-dir", str(out)])
