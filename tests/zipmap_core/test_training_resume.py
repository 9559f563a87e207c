"""Training split over runs: a resumed run continues exactly where the last one stopped (weights,
optimiser, schedule, data stream), and a paired baseline trains on the very same batches."""

import subprocess
import sys

import pytest
import safetensors.torch
import torch

import zipmap_core.training.trainer as trainer
from zipmap_core.training import TrainConfig, train
from zipmap_core.training.state import load_training_state

TINY = dict(
    preset="tiny", device="cpu", steps=4, height=28, width=28, min_frames=2, max_frames=3, frames_per_batch=6,
    pool_size=2, pool_frames=4, new_per_step=0.5, log_every=1, ckpt_every=0, warmup_steps=2, save_dtype="float32",
)


def weights(path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def test_a_resumed_run_in_a_fresh_process_equals_an_uninterrupted_one(tmp_path):
    straight = train(TrainConfig(**TINY, out=str(tmp_path / "straight.safetensors")), log=lambda _: None)

    state = tmp_path / "state.pt"
    first = train(
        TrainConfig(**TINY, out=str(tmp_path / "split.safetensors"), state_out=str(state), stop_at_step=2,
                    state_moments_dtype="float32"),
        log=lambda _: None,
    )
    assert first.steps == 2 and load_training_state(state).step == 2
    # the second run starts from nothing but the state file, as on a fresh machine
    code = (
        "from zipmap_core.training.__main__ import main; import sys; sys.exit(main(sys.argv[1:]))"
    )
    args = ["--config", "tiny", "--device", "cpu", "--steps", "4", "--height", "28", "--width", "28",
            "--min-frames", "2", "--max-frames", "3", "--frames-per-batch", "6", "--pool-size", "2",
            "--pool-frames", "4", "--new-per-step", "0.5", "--log-every", "1", "--ckpt-every", "0",
            "--warmup-steps", "2", "--save-dtype", "float32", "--out", str(tmp_path / "split.safetensors"),
            "--resume", str(state), "--state-out", str(tmp_path / "state2.pt")]
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "resuming at step 2" in run.stdout and "final loss" in run.stdout

    a, b = weights(tmp_path / "straight.safetensors"), weights(tmp_path / "split.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    resumed = load_training_state(tmp_path / "state2.pt")
    assert resumed.step == 4
    history = resumed.models["tiny"].history
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert [h["loss"] for h in history] == pytest.approx([h["loss"] for h in straight.history], rel=1e-6)


def test_the_state_keeps_moments_in_bfloat16_and_weights_in_float32(tmp_path):
    state = tmp_path / "state.pt"
    train(TrainConfig(**{**TINY, "steps": 1}, out=str(tmp_path / "m.safetensors"), state_out=str(state)),
          log=lambda _: None)
    model = load_training_state(state).models["tiny"]
    assert all(v.dtype == torch.float32 for v in model.model.values() if v.is_floating_point())
    moments = [entry["exp_avg_sq"] for entry in model.optimizer["state"].values()]
    assert moments and all(m.dtype == torch.bfloat16 for m in moments)


def test_a_paired_baseline_trains_on_the_same_batches_and_steps(tmp_path, monkeypatch):
    cfg = TrainConfig(
        **{**TINY, "preset": "demo_ttt", "steps": 2}, out=str(tmp_path / "ttt.safetensors"),
        paired_preset="demo_attention", paired_out=str(tmp_path / "att.safetensors"),
        state_out=str(tmp_path / "state.pt"),
    )
    seen: list[tuple[str, torch.Tensor]] = []
    real_step = trainer.train_step

    def recording_step(model, optimizer, batch, *args):  # a spy: the real step runs
        seen.append((model.config.name, batch.images))
        return real_step(model, optimizer, batch, *args)

    monkeypatch.setattr(trainer, "train_step", recording_step)
    result = train(cfg, log=lambda _: None)
    assert result.steps == 2 and result.paired is not None and result.paired.steps == 2
    assert [name for name, _ in seen] == ["demo_ttt", "demo_attention"] * 2
    for (_, ttt_images), (_, attention_images) in zip(seen[0::2], seen[1::2]):
        assert ttt_images is attention_images  # one rendered batch, both models
    assert len(result.history) == len(result.paired.history) == 2
    state = load_training_state(tmp_path / "state.pt")
    assert set(state.models) == {"demo_ttt", "demo_attention"}
    for path, preset in ((cfg.out, "demo_ttt"), (cfg.paired_out, "demo_attention")):
        with safetensors.safe_open(path, "pt") as f:
            assert f.metadata()["preset"] == preset and f.metadata()["steps"] == "2"
