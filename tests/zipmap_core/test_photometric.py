"""Photometric camera alignment (zipmap_core/photometric.py) and `EngineConfig(cameras="photometric")`:
exact on rendered frames with their true depth, robust to a brightness change, wired through every
engine, and refused where frames are not handed out in one ordered stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zipmap_core import EngineConfig, ModelConfig, ZipMap, open_stream, reconstruct, reconstruct_distributed
from zipmap_core.engines import with_photometric_cameras
from zipmap_core.evaluation import camera_metrics
from zipmap_core.evaluation.metrics import rotation_angle_deg
from zipmap_core.photometric import align_pair, photometric_cameras, rotation_exp
from zipmap_core.synthetic import generate_sequence

H, W = 84, 112


def _inputs(seq) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = seq.images.permute(0, 3, 1, 2).float() / 255
    depth = torch.where(seq.valid, seq.depth, torch.full_like(seq.depth, 1e3))  # sky: far away
    return images, depth.float(), seq.intrinsics.float()


def _errors(motion: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Rotation error as a fraction of the true rotation angle, translation error as one of the true step."""
    angle = rotation_angle_deg(truth[:3, :3].T.double() @ motion[:3, :3].double())
    rotation = float(angle / rotation_angle_deg(truth[:3, :3].double()))
    return rotation, float((motion[:3, 3] - truth[:3, 3]).norm() / truth[:3, 3].norm())


def _relative(extrinsics: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Camera j from camera i, 4x4."""
    homo = torch.eye(4).repeat(extrinsics.shape[0], 1, 1)
    homo[:, :3] = extrinsics
    return homo[j] @ torch.linalg.inv(homo[i])


@pytest.fixture(scope="module")
def orbit():
    return generate_sequence(2, num_frames=6, height=H, width=W, scene="room", trajectory="orbit")


def test_rodrigues_matches_the_matrix_exponential():
    w = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    k = torch.tensor([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]], dtype=torch.float64)
    torch.testing.assert_close(rotation_exp(w), torch.linalg.matrix_exp(k))
    torch.testing.assert_close(rotation_exp(torch.zeros(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64))


def test_a_frame_pair_with_its_true_depth_gives_the_true_motion(orbit):
    images, depth, k = _inputs(orbit)
    truth = _relative(orbit.extrinsics.float(), 0, 2)  # two steps apart: 12.7 degrees, a third of the view
    motion, cost = align_pair(images[0], depth[0], k[0], images[2], k[2])
    assert max(_errors(motion, truth)) < 0.02, (_errors(motion, truth), motion, truth)
    assert cost < 0.02  # mean colour error of the aligned pixels, images in [0, 1]
    # a start at the true motion stays there
    again, _ = align_pair(images[0], depth[0], k[0], images[2], k[2], [truth])
    torch.testing.assert_close(again, motion, atol=1e-3, rtol=0)


def test_a_brightness_change_between_frames_is_absorbed(orbit):
    images, depth, k = _inputs(orbit)
    truth = _relative(orbit.extrinsics.float(), 0, 1)
    darker = (images[1] * 0.7 + 0.05).clamp(0, 1)  # an exposure change, as real captures have
    motion, _ = align_pair(images[0], depth[0], k[0], darker, k[1])
    assert max(_errors(motion, truth)) < 0.04, _errors(motion, truth)


def test_a_whole_sequence_with_its_true_depth_gives_the_true_cameras(orbit):
    images, depth, k = _inputs(orbit)
    extrinsics = photometric_cameras(images, depth, k, first=orbit.extrinsics[0])
    torch.testing.assert_close(extrinsics[0], orbit.extrinsics[0].float())
    scores = camera_metrics(extrinsics, orbit.extrinsics)
    trivial = camera_metrics(orbit.extrinsics[:1].expand_as(orbit.extrinsics), orbit.extrinsics)
    # the trajectory's scale is the depth's, here the true one: not only the shape is right
    assert scores["ate"] < 0.01 * trivial["ate"] and abs(scores["sim3_scale"] - 1) < 0.03, (scores, trivial)
    assert scores["rpe_rot_deg"] < 0.25 and scores["rpe_trans"] < 0.03 * trivial["rpe_trans"], scores


def test_no_overlap_keeps_the_start_and_reports_no_fit():
    image = torch.rand(3, 28, 28)
    depth = torch.full((28, 28), -1.0)  # nothing to lift: no pixel can be aligned
    motion, cost = align_pair(image, depth, torch.tensor([[20.0, 0, 13.5], [0, 20, 13.5], [0, 0, 1]]), image,
                              torch.tensor([[20.0, 0, 13.5], [0, 20, 13.5], [0, 0, 1]]), levels=2)
    torch.testing.assert_close(motion, torch.eye(4))
    assert cost == float("inf")


def test_a_textureless_pair_keeps_the_start_instead_of_failing(orbit):
    """A white wall or a frame of sky gives no gradient to align with: no motion is invented and
    nothing breaks (a plain Gauss-Newton step would solve a singular system)."""
    _, depth, k = _inputs(orbit)
    grey = torch.full((3, H, W), 0.5)
    motion, cost = align_pair(grey, depth[0], k[0], grey, k[1])
    torch.testing.assert_close(motion, torch.eye(4))
    assert cost == 0.0
    start = _relative(orbit.extrinsics.float(), 0, 1)
    motion, _ = align_pair(grey, depth[0], k[0], grey, k[1], [start])
    assert torch.isfinite(motion).all()


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return ZipMap(ModelConfig.preset("tiny")).eval()


@pytest.mark.parametrize("mode", ["offline", "chunked", "streaming"])
def test_every_engine_hands_out_the_aligned_cameras(tiny_model, orbit, mode):
    images = orbit.images.permute(0, 3, 1, 2).float() / 255
    images = images[..., : images.shape[-2] // 14 * 14, : images.shape[-1] // 14 * 14]
    engine = EngineConfig(mode=mode, chunk_size=2, window=2, local_points=True)
    network = list(reconstruct(tiny_model, images, engine))
    aligned = list(reconstruct(tiny_model, images, engine.model_copy(update={"cameras": "photometric"})))
    expected = list(with_photometric_cameras(network))
    assert [f.index for f in aligned] == list(range(len(images)))
    np.testing.assert_array_equal(aligned[0].extrinsic, network[0].extrinsic)  # the first frame keeps its camera
    for a, n, e in zip(aligned, network, expected):
        np.testing.assert_allclose(a.extrinsic, e.extrinsic, atol=1e-5)
        np.testing.assert_array_equal(a.depth, n.depth)
        np.testing.assert_array_equal(a.intrinsic, n.intrinsic)
        # the local head's points stay the same points in the camera, now placed by the new camera
        in_camera_network = n.local_points @ n.extrinsic[:, :3].T + n.extrinsic[:, 3]
        in_camera_aligned = a.local_points @ a.extrinsic[:, :3].T + a.extrinsic[:, 3]
        np.testing.assert_allclose(in_camera_aligned, in_camera_network, atol=1e-4)
    assert any(not np.allclose(a.extrinsic, n.extrinsic, atol=1e-3) for a, n in zip(aligned[1:], network[1:]))
    assert EngineConfig(cameras="photometric").settings()["cameras"] == "photometric"
    assert "cameras" not in EngineConfig().settings()  # records of network-camera runs are unchanged


def test_where_photometric_cameras_cannot_run_is_said_clearly(tiny_model):
    with pytest.raises(ValueError, match="one process"):
        EngineConfig(cameras="photometric", mode="chunked", frame_parallel=2)
    with pytest.raises(ValueError, match="with_photometric_cameras"):
        open_stream(tiny_model, EngineConfig(cameras="photometric", window=1))
    with pytest.raises(ValueError, match="with_photometric_cameras"):
        list(reconstruct_distributed(tiny_model, torch.rand(2, 3, 28, 28), EngineConfig(cameras="photometric")))


def test_auto_takes_the_models_camera_source(tiny_model, orbit):
    """`cameras="auto"` (the default): the model config's choice, photometric for the demo presets,
    the camera head for the others; over a frame-parallel group and in a stream, the camera head."""
    from zipmap_core.engines.auto import resolve_engine

    torch.manual_seed(0)
    demo = ZipMap(ModelConfig.preset("demo_ttt")).eval()
    assert ModelConfig.preset("demo_ttt").cameras == "photometric"
    assert ModelConfig.preset("offline_ref_view").cameras == "network"
    assert resolve_engine(EngineConfig(), demo, 4, (56, 56), "cpu").cameras == "photometric"
    assert resolve_engine(EngineConfig(), tiny_model, 4, (56, 56), "cpu").cameras == "network"
    assert resolve_engine(EngineConfig(mode="chunked", frame_parallel=2), demo, 4, (56, 56), "cpu").cameras == "network"
    assert resolve_engine(EngineConfig(cameras="network"), demo, 4, (56, 56), "cpu").cameras == "network"

    images = (orbit.images.permute(0, 3, 1, 2).float() / 255)[:4, :, :56, :56]
    default = list(reconstruct(demo, images))
    network = list(reconstruct(demo, images, EngineConfig(cameras="network")))
    for a, e in zip(default, with_photometric_cameras(network)):
        np.testing.assert_allclose(a.extrinsic, e.extrinsic, atol=1e-5)
    stream = open_stream(demo, EngineConfig(window=2), image_hw=(56, 56))
    pushed = [f for frame in images for f in stream.push(frame)]
    assert len(pushed) == 4  # a stream runs, with the network's cameras
