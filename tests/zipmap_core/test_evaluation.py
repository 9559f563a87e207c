"""Evaluation metrics: identities, invariance to similarity transforms, known error magnitudes."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from zipmap_core.evaluation import (
    camera_metrics,
    depth_metrics,
    evaluate_sequence,
    nearest_distances,
    plot_trajectories,
    pointcloud_metrics,
    trivial_prediction,
    umeyama,
)
from zipmap_core.evaluation.__main__ import main as cli_main
from zipmap_core.evaluation.metrics import camera_centres, match_resolution
from zipmap_core.synthetic import generate_dataset, generate_sequence, read_ground_truth


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rotation(seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen(seed), dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.linalg.det(q) > 0 else -q


def rot_x(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)


def transform_world(extrinsics: torch.Tensor, scale: float, rotation: torch.Tensor, translation: torch.Tensor):
    """The same cameras expressed in a world x' = scale * R x + t (camera frames scaled too)."""
    r, t = extrinsics[:, :, :3], extrinsics[:, :, 3]
    new_r = r @ rotation.T
    new_t = scale * t - (new_r @ translation.unsqueeze(-1)).squeeze(-1)
    return torch.cat([new_r, new_t.unsqueeze(-1)], dim=-1)


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(3, num_frames=6, height=42, width=56, scene="objects", trajectory="orbit")


# ---- alignment --------------------------------------------------------------------------------


def test_umeyama_recovers_a_known_similarity():
    source = torch.randn(50, 3, generator=gen(1), dtype=torch.float64)
    rotation, translation = random_rotation(2), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    target = 2.5 * source @ rotation.T + translation
    sim = umeyama(source, target)
    assert sim.scale == pytest.approx(2.5, abs=1e-10)
    assert torch.allclose(sim.rotation, rotation, atol=1e-10)
    assert torch.allclose(sim.translation, translation, atol=1e-10)
    assert torch.allclose(sim.apply(source), target, atol=1e-10)
    rigid = umeyama(source, source @ rotation.T + translation, with_scale=False)
    assert rigid.scale == 1.0 and torch.allclose(rigid.rotation, rotation, atol=1e-10)


def test_umeyama_never_returns_a_reflection():
    source = torch.randn(30, 3, generator=gen(3), dtype=torch.float64)
    mirrored = source * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    assert torch.linalg.det(umeyama(source, mirrored).rotation) == pytest.approx(1.0)


def test_umeyama_degenerate_source_collapses_to_the_target_mean():
    target = torch.randn(10, 3, generator=gen(4), dtype=torch.float64)
    sim = umeyama(torch.ones(10, 3, dtype=torch.float64), target)
    assert sim.scale == 0.0
    assert torch.allclose(sim.apply(torch.ones(1, 3, dtype=torch.float64)), target.mean(0, keepdim=True))
    single = umeyama(torch.zeros(1, 3, dtype=torch.float64), target[:1])
    assert torch.allclose(single.apply(torch.zeros(1, 3, dtype=torch.float64)), target[:1])


# ---- depth ------------------------------------------------------------------------------------


def test_depth_perfect_scaled_and_masked():
    gt = 1.0 + 5.0 * torch.rand(4, 20, 30, generator=gen(5), dtype=torch.float64)
    valid = torch.rand(4, 20, 30, generator=gen(6)) > 0.2
    assert depth_metrics(gt, gt, valid) == {"abs_rel": 0.0, "delta_1_25": 1.0}
    for alignment in ("frame", "sequence"):
        m = depth_metrics(3.0 * gt, gt, valid, alignment)
        assert m["abs_rel"] < 1e-12 and m["delta_1_25"] == 1.0
    garbage = torch.where(valid, gt, torch.full_like(gt, 1e6))  # invalid pixels do not count
    assert depth_metrics(garbage, gt, valid, "none")["abs_rel"] == 0.0

    per_frame = gt * torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)[:, None, None]
    assert depth_metrics(per_frame, gt, valid, "frame")["abs_rel"] < 1e-12
    assert depth_metrics(per_frame, gt, valid, "sequence")["abs_rel"] > 0.3


def test_depth_noise_gives_the_expected_magnitudes():
    gt = 1.0 + 5.0 * torch.rand(2, 200, 200, generator=gen(7), dtype=torch.float64)
    uniform = gt * (1 + 0.2 * (torch.rand(gt.shape, generator=gen(8), dtype=torch.float64) - 0.5))
    assert depth_metrics(uniform, gt, alignment="none")["abs_rel"] == pytest.approx(0.05, rel=0.02)

    sigma = 0.2  # log-normal noise: delta < 1.25 is P(|N(0, sigma)| < ln 1.25)
    lognormal = gt * torch.exp(sigma * torch.randn(gt.shape, generator=gen(9), dtype=torch.float64))
    expected = math.erf(math.log(1.25) / (sigma * math.sqrt(2)))
    assert depth_metrics(lognormal, gt, alignment="frame")["delta_1_25"] == pytest.approx(expected, abs=0.01)


def test_depth_without_valid_pixels_is_nan():
    m = depth_metrics(torch.ones(1, 4, 4), torch.zeros(1, 4, 4))
    assert math.isnan(m["abs_rel"]) and math.isnan(m["delta_1_25"])


# ---- cameras ----------------------------------------------------------------------------------


def test_cameras_perfect_and_similarity_transformed(sequence):
    gt = torch.as_tensor(sequence.extrinsics, dtype=torch.float64)
    perfect = camera_metrics(gt, gt)
    assert perfect["ate"] < 1e-9 and perfect["rpe_trans"] < 1e-9 and perfect["rpe_rot_deg"] < 1e-6
    moved = transform_world(gt, 3.0, random_rotation(10), torch.tensor([4.0, -1.0, 2.0], dtype=torch.float64))
    m = camera_metrics(moved, gt)
    assert m["ate"] < 1e-6 and m["rpe_trans"] < 1e-6 and m["rpe_rot_deg"] < 1e-5
    assert m["sim3_scale"] == pytest.approx(1 / 3)


def test_camera_noise_gives_the_expected_magnitudes():
    """A straight GT path; predicted centres zig-zag by +-d sideways and the cameras roll by
    +-theta about their optical axis (x here) alternately: ATE ~ d, RPE-t ~ 2d, RPE-r = 2 theta."""
    n, d, theta = 40, 0.05, math.radians(1.0)
    signs = torch.tensor([(-1.0) ** i for i in range(n)], dtype=torch.float64)
    gt_centres = torch.stack([torch.arange(n, dtype=torch.float64), torch.zeros(n), torch.zeros(n)], -1)
    alpha = torch.linspace(0, 0.5, n, dtype=torch.float64)  # GT rotations about x as well: they commute
    gt_r = torch.stack([rot_x(float(a)) for a in alpha])
    pred_r = torch.stack([rot_x(float(a) + float(s) * theta) for a, s in zip(alpha, signs)])
    pred_centres = gt_centres + d * signs[:, None] * torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)

    def extrinsics(r, c):
        return torch.cat([r, -(r @ c.unsqueeze(-1))], dim=-1)

    m = camera_metrics(extrinsics(pred_r, pred_centres), extrinsics(gt_r, gt_centres))
    assert m["ate"] == pytest.approx(d, rel=0.05)
    assert m["rpe_trans"] == pytest.approx(2 * d, rel=0.05)
    assert m["rpe_rot_deg"] == pytest.approx(2.0, rel=1e-6)


def test_training_targets_decoded_as_the_engines_do_score_zero_and_the_other_convention_does_not(sequence):
    """The whole camera path of a model, with a perfect model: the training targets (pose
    encodings relative to frame 0, translations in scene units) decoded by the engines'
    pose_encoding_to_cameras score ~0 against the ground truth; the same cameras read in the
    other convention (camera-to-world) score worse than the trivial identity poses on RPE-t."""
    from zipmap_core.geometry import invert_rigid, pose_encoding_to_cameras
    from zipmap_core.training import batch_from_sequences, make_targets

    b = batch_from_sequences([sequence])
    enc = make_targets(b.depth, b.valid, b.extrinsics, b.intrinsics, b.world_points).pose_enc[0]
    extrinsics, _ = pose_encoding_to_cameras(enc, tuple(b.depth.shape[-2:]))
    gt = torch.as_tensor(sequence.extrinsics, dtype=torch.float64)
    perfect = camera_metrics(extrinsics, gt)
    assert perfect["ate"] < 1e-4 and perfect["rpe_trans"] < 1e-4 and perfect["rpe_rot_deg"] < 1e-2, perfect
    trivial = camera_metrics(trivial_prediction(sequence)["extrinsics"], gt)
    swapped = camera_metrics(invert_rigid(extrinsics.double()), gt)
    assert swapped["rpe_trans"] > trivial["rpe_trans"] and swapped["ate"] > 100 * perfect["ate"] + 1e-3, swapped


def test_camera_degenerate_cases(sequence):
    gt = torch.as_tensor(sequence.extrinsics, dtype=torch.float64)
    frozen = gt[:1].expand_as(gt).clone()  # all centres identical
    m = camera_metrics(frozen, gt)
    spread = (camera_centres(gt) - camera_centres(gt).mean(0)).pow(2).sum(-1).mean().sqrt()
    assert m["ate"] == pytest.approx(float(spread)) and m["sim3_scale"] == 0.0
    assert math.isfinite(m["rpe_trans"]) and math.isfinite(m["rpe_rot_deg"])
    both_frozen = camera_metrics(frozen, frozen)
    assert both_frozen["ate"] == pytest.approx(0.0, abs=1e-12)
    single = camera_metrics(gt[:1], gt[:1])
    assert single["ate"] == pytest.approx(0.0, abs=1e-12) and math.isnan(single["rpe_trans"])


# ---- point clouds -----------------------------------------------------------------------------


def test_nearest_distances_match_brute_force():
    q = torch.randn(300, 3, generator=gen(11), dtype=torch.float64) + 100.0
    r = torch.randn(200, 3, generator=gen(12), dtype=torch.float64) + 100.0
    expected = torch.cdist(q, r, compute_mode="donot_use_mm_for_euclid_dist").min(-1).values
    assert torch.allclose(nearest_distances(q, r, max_block=1000), expected, atol=1e-9)
    assert torch.all(nearest_distances(q, q) < 1e-6)
    assert torch.isinf(nearest_distances(q, r[:0])).all()


def test_pointcloud_identities_and_noise():
    extent = torch.tensor([4.0, 3.0, 2.0], dtype=torch.float64)
    gt = torch.rand(3000, 3, generator=gen(13), dtype=torch.float64) * extent
    perfect = pointcloud_metrics(gt, gt)
    assert perfect["accuracy"] < 1e-6 and perfect["completeness"] < 1e-6
    moved = 3.0 * gt @ random_rotation(14).T + torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    assert pointcloud_metrics(moved, gt)["chamfer"] < 1e-6
    assert pointcloud_metrics(moved, gt, align=False)["chamfer"] > 1.0

    sigma = 0.01
    noise = sigma * torch.randn(gt.shape, generator=gen(15), dtype=torch.float64)
    m = pointcloud_metrics(gt + noise, gt)
    mean_offset = float(noise.norm(dim=-1).mean())  # nearest GT point is at most this far on average
    assert 0.3 * mean_offset < m["accuracy"] <= 1.01 * mean_offset
    assert 0.3 * mean_offset < m["completeness"] <= 1.01 * mean_offset

    sub = pointcloud_metrics(gt + noise, gt, max_points=500)
    assert sub["accuracy"] == pytest.approx(m["accuracy"], rel=0.5)


# ---- whole sequences --------------------------------------------------------------------------


def test_evaluate_sequence_perfect_transformed_and_trivial(sequence):
    perfect = evaluate_sequence(sequence.arrays(), sequence)
    for key in ("depth_abs_rel", "ate", "rpe_trans", "rpe_rot_deg", "pc_accuracy", "pc_completeness"):
        assert perfect[key] < 1e-5, key
    assert perfect["depth_delta_1_25"] == 1.0

    # the same reconstruction in another world frame and at 3x the scale: nothing changes
    ext = transform_world(torch.as_tensor(sequence.extrinsics, dtype=torch.float64), 3.0, random_rotation(16),
                          torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64))
    moved = {"extrinsics": ext, "intrinsics": sequence.intrinsics, "depth": 3.0 * sequence.depth}
    m = evaluate_sequence(moved, sequence)
    for key in ("depth_abs_rel", "ate", "rpe_trans", "rpe_rot_deg", "pc_accuracy", "pc_completeness"):
        assert m[key] < 1e-4, key

    trivial = evaluate_sequence(trivial_prediction(sequence), sequence)
    for key in ("depth_abs_rel", "ate", "rpe_trans", "rpe_rot_deg", "pc_accuracy", "pc_completeness"):
        assert trivial[key] > 10 * max(perfect[key], 1e-4), key
    assert trivial["depth_delta_1_25"] < 0.99


def test_evaluate_sequence_with_partial_or_larger_predictions(sequence):
    cameras_only = evaluate_sequence({"extrinsics": sequence.extrinsics}, sequence)
    assert cameras_only["ate"] < 1e-6
    assert math.isnan(cameras_only["depth_abs_rel"]) and math.isnan(cameras_only["pc_accuracy"])

    # the prediction at twice the resolution (pixel-centre convention: u' = 2u + 0.5)
    up_depth = sequence.depth.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    k = sequence.intrinsics.clone()
    k[:, :2, :2] *= 2
    k[:, :2, 2] = 2 * k[:, :2, 2] + 0.5
    _, back = match_resolution(up_depth.double(), k.double(), tuple(sequence.depth.shape[1:]))
    assert torch.allclose(back, sequence.intrinsics.double(), atol=1e-6)
    m = evaluate_sequence({"extrinsics": sequence.extrinsics, "intrinsics": k, "depth": up_depth}, sequence)
    assert m["depth_abs_rel"] < 1e-6 and m["pc_accuracy"] < 1e-4

    with pytest.raises(ValueError):
        evaluate_sequence({"extrinsics": sequence.extrinsics[:2]}, sequence)


def test_plot_trajectories_writes_a_file(sequence, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    pred = trivial_prediction(sequence)["extrinsics"]
    path = plot_trajectories(pred, sequence.extrinsics, str(tmp_path / "t.png"), "a & b")
    assert path.endswith("t.svg")
    text = open(path).read()
    assert text.startswith("<svg") and text.count("<polyline") == 2 and "a &amp; b" in text


# ---- the command line -------------------------------------------------------------------------


def _write_pipeline_run(run, name: str, pred: dict) -> None:
    """The two tables of a pipeline run that the evaluation reads (columns it needs only)."""
    s = pred["extrinsics"].shape[0]
    frames = pa.table({
        "frame_index": pa.array(list(range(s)), pa.int32()),
        "extrinsic": [e.reshape(12).tolist() for e in pred["extrinsics"]],
        "intrinsic": [k.reshape(9).tolist() for k in pred["intrinsics"]],
    })
    depth = pa.table({
        "frame_index": pa.array(list(range(s)), pa.int32()),
        "height": [d.shape[0] for d in pred["depth"]],
        "width": [d.shape[1] for d in pred["depth"]],
        "depth": [d.reshape(-1).tolist() for d in pred["depth"]],
    })
    for kind, table in (("frames", frames), ("depth", depth)):
        folder = run / kind / f"sequence_id={name}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet")


def test_cli_evaluates_a_run_and_the_trivial_baseline(tmp_path, capsys):
    dataset = tmp_path / "gt"
    generate_dataset(str(dataset), 3, seed=2, num_frames=3, height=28, width=42, progress=False)
    run = tmp_path / "run"
    gt0 = read_ground_truth(str(dataset / "seq_00000"))
    _write_pipeline_run(run, "seq_00000", gt0)  # a perfect pipeline run for the first sequence
    gt1 = read_ground_truth(str(dataset / "seq_00001"))
    doubled = gt1["extrinsics"].copy()
    doubled[:, :, 3] *= 2  # the world at twice the scale, consistently with the depth
    np.savez(run / "seq_00001.npz", extrinsics=doubled, intrinsics=gt1["intrinsics"],
             depth=2.0 * gt1["depth"])  # plain arrays for the second; nothing for the third

    out = tmp_path / "result.json"
    plots = tmp_path / "plots"
    result = cli_main(["--pred", str(run), "--gt", str(dataset), "--json", str(out), "--plots", str(plots)])
    printed = capsys.readouterr().out
    assert "seq_00000" in printed and "mean" in printed and "(missing)" in printed
    rows = {r["sequence"]: r for r in json.loads(out.read_text())["sequences"]}
    assert [rows[n]["status"] for n in sorted(rows)] == ["ok", "ok", "missing"]
    for name in ("seq_00000", "seq_00001"):
        assert rows[name]["ate"] < 1e-4 and rows[name]["depth_abs_rel"] < 1e-6 and rows[name]["pc_accuracy"] < 1e-4
    assert rows["seq_00002"]["ate"] is None
    assert len(list(plots.iterdir())) == 2

    trivial = cli_main(["--pred", "trivial", "--gt", str(dataset)])
    assert trivial["mean"]["depth_abs_rel"] > 0.01 and trivial["mean"]["ate"] > result["mean"]["ate"]
