"""Frames pushed one at a time (`open_stream(...).push`) give the streaming engine's predictions,
which are the reference window-1 schedule's (one forward pass over the whole sequence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.zipmap_core.test_engines import EXACT, max_rel_error, tiny
from zipmap_core import EngineConfig, open_stream, reconstruct
from zipmap_core.geometry import align_to_first_view, pose_encoding_to_cameras
from zipmap_core.layers.ttt import windowed_schedule


@pytest.fixture(scope="module")
def images():
    return torch.rand(6, 3, 56, 84, generator=torch.Generator().manual_seed(2))


def test_push_at_window_1_gives_each_frame_as_the_streaming_engine_and_the_reference_schedule(images):
    model = tiny(camera_head="mlp", streaming_window=1, affine_invariant=True)
    engine = EngineConfig(local_points=True, **EXACT)
    batch = list(reconstruct(model, images, engine))  # "auto": streaming at the model's window of 1
    session = open_stream(model, engine)
    pushed = []
    for frame in images:
        got = session.push(frame)
        assert [f.index for f in got] == [len(pushed)]  # each frame's prediction as soon as it is pushed
        pushed += got
    assert session.flush() == []
    for field, err in max_rel_error(batch, pushed).items():
        assert err <= 1e-6, (field, err)

    per_frame = model.config.patch_start_idx + (56 // 14) * (84 // 14)
    with torch.inference_mode():
        expected = model(images, schedule=windowed_schedule(6 * per_frame, per_frame))
    depth = np.stack([f.depth for f in pushed])
    np.testing.assert_allclose(depth, expected["depth"][0, ..., 0].numpy(), rtol=1e-4, atol=1e-6)
    extrinsics = align_to_first_view(pose_encoding_to_cameras(expected["pose_enc"][0], (56, 84))[0])
    np.testing.assert_allclose(np.stack([f.extrinsic for f in pushed]), extrinsics.numpy(), atol=1e-4)


def test_push_at_a_wider_window_answers_when_the_window_is_full_and_flush_ends_the_stream(images):
    model = tiny(camera_head="mlp", streaming_window=4)
    engine = EngineConfig(**EXACT)
    batch = list(reconstruct(model, images, engine))
    session = open_stream(model, engine)
    answers = [session.push(frame) for frame in images]
    assert [len(a) for a in answers] == [0, 0, 0, 4, 0, 0]
    tail = session.flush()
    assert [f.index for f in tail] == [4, 5]
    for field, err in max_rel_error(batch, [f for a in answers for f in a] + tail).items():
        assert err <= 1e-6, (field, err)


def test_push_rejects_bad_frames_and_open_stream_a_model_without_a_window(images):
    session = open_stream(tiny(camera_head="mlp", streaming_window=2))
    with pytest.raises(ValueError, match=r"one frame \[3, H, W\]"):
        session.push(images[:2])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        session.push(images[0, :, :50])
    session.push(images[0])
    with pytest.raises(ValueError, match="differs from this window's"):
        session.push(images[0, :, :42])
    with pytest.raises(ValueError, match="needs a window"):
        open_stream(tiny())


def test_graphed_stream_state_in_static_buffers_gives_the_same_predictions(images):
    """open_stream(cuda_graph=True): from frame 2 on, the frame and the fast weights live in static
    buffers updated in place (what the CUDA graph replays; off CUDA the same step runs eagerly)."""
    model = tiny(camera_head="mlp", streaming_window=1)
    engine = EngineConfig(local_points=True, **EXACT)
    session = open_stream(model, engine)
    plain = [f for frame in images for f in session.push(frame)]
    graphed = open_stream(model, engine, cuda_graph=True)
    pushed = [f for frame in images for f in graphed.push(frame)]
    assert graphed.static_images is not None and graphed.capture_s is not None  # frames 2.. took that path
    assert [f.index for f in pushed] == list(range(6))
    for field, err in max_rel_error(plain, pushed).items():
        assert err <= 1e-6, (field, err)
    with pytest.raises(ValueError, match="differs from the stream's"):
        graphed.push(images[0, :, :42])
    with pytest.raises(ValueError, match="cuda_graph needs window 1"):
        open_stream(tiny(camera_head="mlp", streaming_window=2), cuda_graph=True)
