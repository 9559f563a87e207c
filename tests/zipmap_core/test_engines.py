"""The engines agree with each other: chunked == offline, chained streaming == one call.

Exactly so with float32 Newton-Schulz (`EXACT`); under the released bfloat16 orthogonalisation
(the default) a different summation order can round an update differently, which
`test_chunked_stays_within_bf16_newton_schulz_of_offline` bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.zipmap_core.reference_data import assert_derived_camera_matches, filled_state_dict, load_arrays
from zipmap_core.config import ModelConfig
from zipmap_core.engines import EngineConfig, StreamingSession, reconstruct
from zipmap_core.engines.frames import frame_colours
from zipmap_core.engines.precision import set_newton_schulz_precision
from zipmap_core.geometry import align_to_first_view, local_to_world
from zipmap_core.layers.ttt import windowed_schedule
from zipmap_core.models.zipmap import ZipMap

FIELDS = ("extrinsic", "intrinsic", "depth", "depth_conf", "world_points", "local_points")
EXACT = {"newton_schulz": "float32"}  # the float32 orthogonalisation: engines agree to rounding


def tiny(**overrides) -> ZipMap:
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny").model_copy(update=overrides)
    return ZipMap(cfg).eval()


def max_rel_error(a_frames, b_frames) -> dict[str, float]:
    assert [f.index for f in a_frames] == [f.index for f in b_frames]
    errors = {}
    for field in FIELDS:
        if getattr(a_frames[0], field) is None:
            assert getattr(b_frames[0], field) is None
            continue
        a = np.stack([getattr(f, field) for f in a_frames])
        b = np.stack([getattr(f, field) for f in b_frames])
        errors[field] = float(np.abs(a - b).max() / np.abs(a).max())
    return errors


@pytest.fixture(scope="module")
def images():
    return torch.rand(7, 3, 56, 84, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 16])
def test_chunked_equals_offline_tiny(images, chunk_size, affine):
    model = tiny(affine_invariant=affine)
    offline = list(reconstruct(model, images, EngineConfig(local_points=True, **EXACT)))
    chunked = list(
        reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=chunk_size, local_points=True, **EXACT))
    )
    for field, err in max_rel_error(offline, chunked).items():
        assert err <= 1e-4, (field, err)


def test_chunked_stays_within_bf16_newton_schulz_of_offline(images):
    """Under the default (released) bf16 orthogonalisation chunked and offline differ by about as
    much as bf16 and float32 Newton-Schulz do: rounding, not a different algorithm."""
    model = tiny()
    offline = list(reconstruct(model, images, EngineConfig(mode="offline")))
    chunked = list(reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=4)))
    exact = list(reconstruct(model, images, EngineConfig(mode="offline", **EXACT)))
    engines, precision = max_rel_error(offline, chunked), max_rel_error(exact, offline)
    for field, err in engines.items():
        assert err <= 2 * precision[field] + 1e-4, (field, engines, precision)


@pytest.mark.parametrize("head_inputs", ["keep", "auto"])
def test_chunked_spills_to_scratch_and_stays_exact(images, tmp_path, head_inputs):
    model = tiny()
    offline = list(reconstruct(model, images, EngineConfig(mode="offline", **EXACT)))
    engine = EngineConfig(
        mode="chunked", chunk_size=2, host_memory_budget_gb=1e-5, scratch_dir=str(tmp_path), head_inputs=head_inputs,
        **EXACT,
    )
    chunked = list(reconstruct(model, images, engine))
    assert max(max_rel_error(offline, chunked).values()) <= 1e-4
    assert list(tmp_path.iterdir()) == []  # scratch cleaned up


def test_chunked_recomputing_head_inputs_stays_exact(images):
    model = tiny()
    offline = list(reconstruct(model, images, EngineConfig(mode="offline", **EXACT)))
    chunked = list(
        reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=3, head_inputs="recompute", **EXACT))
    )
    assert max(max_rel_error(offline, chunked).values()) <= 1e-4


def test_chunked_streams_frames_before_the_end(images):
    model = tiny()
    frames = reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=2))
    first = next(frames)
    assert first.index == 0 and first.depth.shape == (56, 84)
    assert [f.index for f in frames] == list(range(1, 7))


def test_chunked_hands_out_a_chunk_after_queueing_the_next_chunks_heads(images, monkeypatch):
    """The GPU decodes chunk j+1 while the host finishes chunk j and the consumer takes it: when
    the first frame arrives, the second chunk's dense heads have been called."""
    model = tiny()
    calls = []
    decode = model.decode_dense
    monkeypatch.setattr(model, "decode_dense", lambda *a, **k: calls.append(len(calls)) or decode(*a, **k))
    frames = reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=2, head_inputs="keep"))
    assert next(frames).index == 0 and calls == [0, 1]
    assert [f.index for f in frames] == list(range(1, 7)) and calls == [0, 1, 2, 3]


def test_chunked_takes_the_colours_when_it_first_reads_the_frames(images):
    """The results' colours are made when the trunk reads the frames (on the GPU, where they are
    then) and kept with the heads' inputs; converting host images chunk by chunk at the end left
    the GPU idle (about 60 ms a chunk of 64 frames at 392x518 on the H200's host). Frames changed
    after that do not change the colours."""
    model = tiny()
    expected = frame_colours(images).numpy()
    changing = images.clone()
    frames = reconstruct(model, changing, EngineConfig(mode="chunked", chunk_size=2, head_inputs="keep"))
    got = [next(frames)]
    changing.zero_()
    got += list(frames)
    assert [f.index for f in got] == list(range(7))
    for f in got:
        assert np.array_equal(f.image, expected[f.index]), f.index


@pytest.mark.slow
def test_chunked_matches_reference_offline_outputs():
    """Chunks of 2 over 5 frames (the last chunk is short) against the published model's outputs."""
    model = ZipMap(ModelConfig.preset("reference_dev")).eval()
    model.load_state_dict(filled_state_dict(model))
    ref = load_arrays()
    images = torch.from_numpy(ref["images"])[0]
    frames = list(reconstruct(model, images, EngineConfig(mode="chunked", chunk_size=2, local_points=True, **EXACT)))
    assert_matches_reference_offline_outputs(frames, ref)


def assert_matches_reference_offline_outputs(frames, ref: dict[str, np.ndarray]) -> None:
    """Frames (FramePrediction or anything with its attributes) of the reference images against
    the published model's offline outputs."""
    extrinsics = align_to_first_view(torch.from_numpy(ref["offline/extrinsic"][0]))
    expected = {
        "extrinsic": extrinsics.numpy(),
        "intrinsic": ref["offline/intrinsic"][0],
        "depth": ref["offline/depth"][0, ..., 0],
        "depth_conf": ref["offline/depth_conf"][0],
        "local_points": local_to_world(torch.from_numpy(ref["offline/local_points"][0]), extrinsics).numpy(),
    }
    for field, want in expected.items():
        got = np.stack([getattr(f, field) for f in frames])
        if field in ("extrinsic", "intrinsic"):
            assert_derived_camera_matches(got, want, field)
            continue
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= 1e-4, (field, err)


def test_streaming_session_chained_equals_one_call(images):
    model = tiny(camera_head="mlp", streaming_window=2)
    set_newton_schulz_precision(model, "float32")
    per_frame = model.config.patch_start_idx + 4 * 6
    with torch.inference_mode():
        one_call = model(images, schedule=windowed_schedule(7 * per_frame, 2 * per_frame))
    session = StreamingSession(model, window=2, device=torch.device("cpu"))
    chained = [session.feed(images[s : s + 2]) for s in range(0, 7, 2)]
    depth = torch.cat([c["depth"] for c in chained], dim=1)
    assert torch.allclose(depth, one_call["depth"], rtol=1e-4, atol=1e-6)
    pose = torch.cat([c["pose_enc"] for c in chained], dim=1)
    assert torch.allclose(pose, one_call["pose_enc"], rtol=1e-4, atol=1e-5)


def test_streaming_engine_yields_every_frame_aligned_to_the_first(images):
    model = tiny(camera_head="mlp", streaming_window=3)
    frames = list(reconstruct(model, images, EngineConfig(mode="streaming")))
    assert [f.index for f in frames] == list(range(7))
    np.testing.assert_allclose(frames[0].extrinsic, np.eye(3, 4), atol=1e-5)


def test_streaming_differs_from_offline(images):
    """Windows see only the past: a sanity check that the schedule is really used."""
    model = tiny()
    offline = list(reconstruct(model, images))
    streaming = list(reconstruct(model, images, EngineConfig(mode="streaming", window=2)))
    assert max_rel_error(offline, streaming)["depth"] > 1e-6


def test_offline_frames_are_consistent(images):
    model = tiny()
    frames = list(reconstruct(model, images))
    assert len(frames) == 7
    f = frames[0]
    np.testing.assert_allclose(f.extrinsic, np.eye(3, 4), atol=1e-5)
    assert f.image.dtype == np.uint8 and f.image.shape == (56, 84, 3)
    assert f.world_points.shape == (56, 84, 3) and np.isfinite(f.world_points).all()
    assert np.all(f.depth > 0) and np.all(f.depth_conf > 1)
    # frame 0 is the world frame: its world points are its depth unprojected with its intrinsics
    K = f.intrinsic
    u = np.arange(84)[None, :].repeat(56, 0)
    np.testing.assert_allclose(f.world_points[..., 0], (u - K[0, 2]) / K[0, 0] * f.depth, rtol=1e-4, atol=1e-5)
    assert f.camera_conf == pytest.approx(float(f.depth_conf.mean()), rel=1e-6)


def test_bfloat16_autocast_runs_on_cpu(images):
    model = tiny()
    frames = list(reconstruct(model, images, EngineConfig(dtype="bfloat16")))
    exact = list(reconstruct(model, images))
    assert all(np.isfinite(f.depth).all() for f in frames)
    assert max_rel_error(exact, frames)["depth"] < 0.1


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(0, 3, 56, 84), "no frames"),
        (torch.rand(2, 1, 56, 84), "expected images"),
        (torch.rand(2, 3, 50, 84), "multiple of the patch size"),
    ],
)
def test_bad_input_is_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        list(reconstruct(tiny(), bad))


def test_chunked_needs_ttt(images):
    with pytest.raises(ValueError, match="TTT"):
        list(reconstruct(tiny(global_block="attention"), images, EngineConfig(mode="chunked")))


def test_streaming_needs_a_window(images):
    with pytest.raises(ValueError, match="window"):
        list(reconstruct(tiny(), images, EngineConfig(mode="streaming")))


def test_world_points_are_the_unprojected_depth(images):
    from zipmap_core.geometry import unproject_depth

    frame = list(reconstruct(tiny(), images))[4]
    expected = unproject_depth(
        torch.from_numpy(frame.depth), torch.from_numpy(frame.extrinsic), torch.from_numpy(frame.intrinsic)
    )
    np.testing.assert_allclose(frame.world_points, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_chunked_auto_keeps_head_inputs_that_fit_only_in_their_compact_form(images, monkeypatch):
    """7 frames of 56x84: 3712 B of tokens, 4224 B of head inputs (the four projections were
    8448 B) and 14112 B of colours a frame. Under a 170 kB host budget the compact inputs fit
    (154 kB; the four projections would need 184 kB), so `auto` keeps them and the trunk runs
    once; the result is the `keep` path's, bit for bit."""
    from zipmap_core.engines import chunked

    model = tiny()
    assert chunked.head_input_bytes(model, (56, 84), local_points=False) == 4224
    reruns = []

    def counted(*args, **kwargs):
        reruns.append(args[3])
        return rerun(*args, **kwargs)

    rerun = chunked._rerun_for_heads
    monkeypatch.setattr(chunked, "_rerun_for_heads", counted)
    common = {"mode": "chunked", "chunk_size": 2, "gpu_cache_gb": 0.0, **EXACT}
    budget = {"host_memory_budget_gb": 170_000 / 2**30}
    auto = list(reconstruct(model, images, EngineConfig(head_inputs="auto", **budget, **common)))
    assert reruns == []
    keep = list(reconstruct(model, images, EngineConfig(head_inputs="keep", **common)))
    assert set(max_rel_error(keep, auto).values()) == {0.0}
    list(reconstruct(model, images, EngineConfig(head_inputs="auto", host_memory_budget_gb=100_000 / 2**30, **common)))
    assert reruns == [0, 2, 4, 6]  # a smaller budget: the trunk reruns per chunk for the heads
