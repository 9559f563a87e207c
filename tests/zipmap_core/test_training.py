"""Training: losses vanish on ground truth, steps reduce the loss, gradients reach the TTT layers,
checkpoints reload strictly, data batches are reproducible and never use held-out seeds."""

import math

import pytest
import safetensors
import torch

from zipmap_core import ModelConfig, ZipMap, load_checkpoint
from zipmap_core.geometry import cameras_to_pose_encoding, unproject_depth
from zipmap_core.synthetic import generate_sequence
from zipmap_core.training import (
    TRAIN_SEED_START,
    LossWeights,
    SyntheticBatches,
    TrainConfig,
    batch_from_sequences,
    batch_loss,
    camera_loss,
    held_out_seeds,
    make_optimizer,
    make_targets,
    total_loss,
    train,
    train_step,
)
from zipmap_core.training.__main__ import main as cli_main
from zipmap_core.training.data import crop_height, crop_heights
from zipmap_core.training.trainer import forward_for_training, init_pose_output, lr_factor

H, W = 42, 56


@pytest.fixture(scope="module")
def batch():
    sequences = [
        generate_sequence(seed, num_frames=3, height=H, width=W, scene=scene)
        for seed, scene in ((11, "room"), (12, "objects"))
    ]
    return batch_from_sequences(sequences)


def perfect_outputs(targets):
    """What a perfect model would output (confidence 1, so the log-confidence term is 0 too)."""
    return {
        "pose_enc": targets.pose_enc.clone(),
        "depth": targets.depth[..., None].clone(),
        "depth_conf": torch.ones_like(targets.depth),
        "local_points": targets.points.clone(),
    }


def test_targets_are_relative_to_the_first_camera_and_unit_scale(batch):
    t = make_targets(batch.depth, batch.valid, batch.extrinsics, batch.intrinsics, batch.world_points)
    first = t.pose_enc[:, 0]
    assert torch.allclose(first[:, :3], torch.zeros(2, 3), atol=1e-5)  # no translation
    assert torch.allclose(first[:, 3:7].abs(), torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(2, 4), atol=1e-5)
    # the mean distance of valid points from the first camera is the unit of length
    cam0 = t.points[:, 0][t.valid[:, 0]]
    assert 0.3 < float(cam0.norm(dim=-1).mean()) < 3.0
    # a world scaled by k gives the same targets
    k = 3.7
    scaled = batch.extrinsics.clone()
    scaled[..., 3] *= k
    t2 = make_targets(batch.depth * k, batch.valid, scaled, batch.intrinsics, batch.world_points * k)
    assert torch.allclose(t2.pose_enc, t.pose_enc, atol=1e-4)
    assert torch.allclose(t2.depth, t.depth, atol=1e-4)
    assert torch.allclose(t2.scale, t.scale * k, rtol=1e-5)


def test_losses_vanish_for_ground_truth_and_grow_with_errors(batch):
    targets = make_targets(batch.depth, batch.valid, batch.extrinsics, batch.intrinsics, batch.world_points)
    loss, terms = total_loss(perfect_outputs(targets), targets)
    assert abs(float(loss)) < 1e-4, terms
    assert set(terms) >= {"camera_T", "camera_R", "camera_FoV", "depth", "depth_grad", "depth_log", "points"}

    wrong = perfect_outputs(targets)
    wrong["pose_enc"] = wrong["pose_enc"] + 0.1
    wrong["depth"] = wrong["depth"] * torch.linspace(0.5, 1.5, W)
    wrong["local_points"] = wrong["local_points"] + 0.1
    _, bad = total_loss(wrong, targets)
    for name in ("camera_T", "camera_R", "camera_FoV", "depth", "depth_grad", "depth_log", "points"):
        assert float(bad[name]) > 1e-3, name


def test_camera_loss_ignores_the_quaternion_sign_and_weights_iterations():
    ext = torch.eye(3, 4).expand(1, 2, 3, 4).clone()
    ext[0, 1, :, :3] = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    K = torch.tensor([[50.0, 0, 28], [0, 50.0, 21], [0, 0, 1]]).expand(1, 2, 3, 3)
    target = cameras_to_pose_encoding(ext, K, (H, W))
    flipped = target.clone()
    flipped[..., 3:7] *= -1
    assert float(camera_loss(flipped, target)["camera_R"]) < 1e-6
    # the last iteration counts most
    off = target + 1.0
    early_wrong = camera_loss([off, target], target, gamma=0.5)["camera_T"]
    late_wrong = camera_loss([target, off], target, gamma=0.5)["camera_T"]
    assert float(early_wrong) < float(late_wrong)


def test_gradients_reach_the_ttt_layers(batch):
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny"))
    loss, _ = batch_loss(model, batch, LossWeights())
    loss.backward()
    ttt = {n: p for n, p in model.named_parameters() if ".ttt_block." in n}
    assert ttt, "the tiny preset has TTT global blocks"
    for name, p in ttt.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # the fast-weight initial values themselves are trained through the inner update
    for suffix in ("w0", "w1", "w2", "lr_fc.weight", "to_qkv.weight"):
        grads = [p.grad for n, p in ttt.items() if n.endswith(suffix)]
        assert grads and all(float(g.abs().sum()) > 0 for g in grads), suffix
    assert all(p.grad is not None for p in model.parameters())


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(batch):
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny"))
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    with torch.no_grad():
        before = float(batch_loss(model, batch, LossWeights())[0])
    for _ in range(12):
        train_step(model, optimizer, batch)
    with torch.no_grad():
        after = float(batch_loss(model, batch, LossWeights())[0])
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("preset", ["tiny", "demo_ttt"])
def test_a_fresh_camera_head_starts_at_the_trivial_prediction(batch, preset):
    """Zero translation, the identity rotation and the init field of view for every frame and
    every camera-head iteration, whatever the images: a head that started with random output
    weights spent its first hundreds of steps unlearning noise 5-40x the targets' spread."""
    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset(preset))
    init_pose_output(model, fov=1.0)
    with torch.no_grad():
        encs = forward_for_training(model, batch.images)["pose_encs"]
    trivial = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).expand_as(encs[-1])
    assert torch.allclose(encs[-1], trivial, atol=1e-6)
    assert all(torch.allclose(e, e[:1, :1].expand_as(e), atol=1e-6) for e in encs)  # no input dependence


def test_lr_schedule_warms_up_then_anneals_to_zero():
    assert lr_factor(0, 0.0, 10) == pytest.approx(0.1)
    assert lr_factor(9, 0.0, 10) == pytest.approx(1.0)
    assert lr_factor(50, 0.5, 10) == pytest.approx(0.5)
    assert lr_factor(99, 1.0, 10) == pytest.approx(0.0, abs=1e-12)
    # with a floor: the cosine ends at min_ratio, and 1.0 keeps the rate constant after the warmup
    assert lr_factor(99, 1.0, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, 0.5, 10, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(0, 0.0, 10, min_ratio=1.0) == pytest.approx(0.1)
    assert lr_factor(99, 1.0, 10, min_ratio=1.0) == pytest.approx(1.0)


def test_batches_are_reproducible_and_never_use_held_out_seeds(monkeypatch):
    seeds = []
    import zipmap_core.training.data as data_module

    real = data_module.generate_sequence

    def spy(seed, **kwargs):
        seeds.append(seed)
        return real(seed, **kwargs)

    monkeypatch.setattr(data_module, "generate_sequence", spy)
    data = SyntheticBatches(
        height=28, width=28, min_frames=2, max_frames=3, frames_per_batch=6, pool_size=2, pool_frames=4,
        new_per_step=0.5, seed=3,
    )
    data.fill()
    twin = data.clone()
    for _ in range(3):
        a, b = next(data), next(twin)
        B, S = a.shape
        assert 2 <= S <= 3 and B == 6 // S
        assert a.images.shape == (B, S, 3, 28, 28) and a.images.dtype == torch.float32
        assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
        assert torch.equal(a.images, b.images) and torch.equal(a.extrinsics, b.extrinsics)
    assert data.rendered == 2 + 1  # the pool, then half a sequence per step
    assert all(s >= TRAIN_SEED_START for s in seeds)
    assert max(held_out_seeds(16)) < TRAIN_SEED_START


def test_aspect_crops_keep_the_geometry_exact(batch):
    cropped = crop_height(batch, 28)
    assert cropped.images.shape[-2:] == (28, W) and cropped.world_points.shape[2:4] == (28, W)
    assert torch.allclose(cropped.intrinsics[..., 1, 2], torch.full((2, 3), 14.0))
    points = unproject_depth(cropped.depth, cropped.extrinsics, cropped.intrinsics)
    valid = cropped.valid
    assert torch.allclose(points[valid], cropped.world_points[valid], atol=1e-3)
    assert crop_heights(224, 14, 0.5) == [224, 210, 196, 182, 168, 154, 140, 126, 112]
    with pytest.raises(ValueError):
        crop_height(batch, 27)  # odd margin: the principal point would leave the centre


def test_train_saves_a_checkpoint_that_loads_strictly(tmp_path):
    out = tmp_path / "tiny.safetensors"
    cfg = TrainConfig(
        preset="tiny", out=str(out), device="cpu", steps=3, height=28, width=28, min_frames=2, max_frames=2,
        frames_per_batch=4, pool_size=2, pool_frames=3, log_every=1, ckpt_every=2, warmup_steps=2,
    )
    lines = []
    result = train(cfg, log=lines.append)
    assert result.steps == 3 and len(result.history) == 3 and math.isfinite(result.final_loss)
    # every log line says how far the model relates its frames (the probe of training/diagnostics.py)
    assert all(e["cross_frame_camera"] > 0 and e["cross_frame_patches"] > 0 for e in result.history)
    assert "cross_frame_camera=" in lines[-2]
    model = load_checkpoint(ZipMap(ModelConfig.preset("tiny")), out)  # strict by default
    assert model is not None
    with safetensors.safe_open(str(out), "pt") as f:
        assert f.metadata()["preset"] == "tiny" and f.metadata()["steps"] == "3"
        assert f.get_tensor("aggregator.camera_token").dtype == torch.float16
    # fine-tuning starts from it
    tuned = tmp_path / "tuned.pt"
    again = train(TrainConfig(**{**cfg.__dict__, "out": str(tuned), "init": str(out), "steps": 1}), log=lines.append)
    assert again.steps == 1 and tuned.exists()


def test_a_time_budget_ends_the_run(tmp_path):
    out = tmp_path / "t.safetensors"
    cfg = TrainConfig(
        preset="tiny", out=str(out), device="cpu", minutes=1e-4, height=28, width=28, max_frames=2,
        frames_per_batch=2, pool_size=1, pool_frames=2, log_every=1,
    )
    result = train(cfg, log=lambda _: None)
    assert result.steps <= 1 and out.exists()


def test_cli_trains_the_tiny_preset(tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    code = cli_main([
        "--config", "tiny", "--device", "cpu", "--steps", "2", "--out", str(out), "--height", "28", "--width", "28",
        "--max-frames", "2", "--frames-per-batch", "2", "--pool-size", "1", "--pool-frames", "2", "--log-every", "1",
    ])
    assert code == 0 and out.exists()
    assert "final loss" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["demo_ttt", "demo_attention"])
def test_demo_presets_stay_small(name):
    cfg = ModelConfig.preset(name)
    assert cfg.global_block == ("ttt" if name == "demo_ttt" else "attention")
    assert not cfg.affine_invariant and cfg.dpt.layers[-1] == cfg.depth - 1
    params = sum(p.numel() for p in ZipMap(cfg).parameters())
    assert params * 2 < 10e6  # float16 weights under 10 MB


def test_the_curriculum_starts_with_short_sequences_of_neighbouring_frames():
    data = SyntheticBatches(
        height=28, width=28, min_frames=2, max_frames=6, frames_per_batch=12, pool_size=2, pool_frames=8,
        new_per_step=0.0, seed=5, curriculum=0.5,
    )
    data.fill()
    frames_at = {}
    for progress in (0.0, 0.25, 0.5, 1.0):
        data.progress = progress
        frames_at[progress] = [next(data).shape[1] for _ in range(30)]
    assert max(frames_at[0.0]) == 2 and max(frames_at[0.25]) <= 4 and max(frames_at[1.0]) == 6

    # the frames of a sample stay neighbours at the start: the span of a 2-frame sample is 2 frames
    seq = data.pool[0]
    data.progress = 0.0
    checked = 0
    for _ in range(20):
        batch = data.sample()
        for b in range(batch.shape[0]):
            matches = [
                i for i in range(8)
                if any(torch.equal(batch.extrinsics[b, s], seq.extrinsics[i]) for s in range(batch.shape[1]))
            ]
            if len(matches) == 2:
                assert abs(matches[1] - matches[0]) == 1
                checked += 1
    assert checked > 0


def test_cross_frame_influence_measures_what_changing_frame_0_does_to_the_others():
    """Mirroring frame 0 moves the other frames' tokens of a network with global blocks; a frame 0
    that mirroring leaves unchanged moves nothing; the model's training mode is restored."""
    from zipmap_core.training.diagnostics import cross_frame_influence, probe_images

    torch.manual_seed(0)
    model = ZipMap(ModelConfig.preset("tiny")).train()
    images = probe_images(28, 42, sequences=2, frames=3)
    moved = cross_frame_influence(model, images)
    assert moved["camera"] > 1e-3 and moved["patches"] > 1e-4 and model.training
    symmetric = images.clone()
    symmetric[:, 0] = 0.5  # a flat frame 0: its mirror image is itself
    assert cross_frame_influence(model, symmetric) == {"camera": 0.0, "patches": 0.0}
