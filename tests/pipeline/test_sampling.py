"""Frame selection: the released fps rule, stride, and max_frames first / uniform."""

from __future__ import annotations

import itertools

import pytest

from pipeline.sampling import FrameSelection
from pipeline.spec import FrameSampling


def released_fps_rule(total: int, video_fps: float, target_fps: float) -> list[int]:
    """The released demo's loop (demo_gradio_zipmap.py, handle_uploads), transcribed: frames are
    counted from 1 while reading and kept when the count is a multiple of the interval."""
    frame_interval = max(1, int(round(video_fps / target_fps)))
    kept, count = [], 0
    for index in range(total):
        count += 1
        if count % frame_interval == 0:
            kept.append(index)
    return kept


def select(total, rate=None, **fields) -> list[int]:
    return list(FrameSelection.plan(FrameSampling(**fields), rate).indices(total))


@pytest.mark.parametrize(
    "rate, fps, expected",
    [
        (30.0, 1.0, [29, 59, 89]),
        (30000 / 1001, 1.0, [29, 59, 89]),  # 29.97 rounds to 30
        (24.0, 1.0, [23, 47, 71]),
        (30.0, 2.0, [14, 29, 44, 59, 74, 89]),
        (25.0, 2.0, [11, 23, 35, 47, 59, 71, 83]),  # round(12.5) = 12, Python's rounding as released
        (10.0, 30.0, list(range(95))),  # asking for more than the video has: every frame
    ],
)
def test_fps_follows_the_released_rule(rate, fps, expected):
    assert select(95, rate, fps=fps) == expected == released_fps_rule(95, rate, fps)


def test_fps_needs_a_rate():
    assert select(5, None, fps=1.0) == [0, 1, 2, 3, 4]  # an image folder without image_fps


def test_stride_and_first_frames():
    assert select(10, frame_stride=3) == [0, 3, 6, 9]
    assert select(10, frame_stride=3, max_frames=2) == [0, 3]
    assert select(100, 30.0, fps=1.0, frame_stride=2) == [29, 89]
    assert list(itertools.islice(FrameSelection.plan(FrameSampling(fps=1.0), 30.0).indices(), 3)) == [29, 59, 89]


def test_uniform_spread_keeps_first_and_last():
    assert select(30, max_frames=4, spread="uniform") == [0, 10, 19, 29]
    assert select(30, max_frames=1, spread="uniform") == [0]
    assert select(3, max_frames=5, spread="uniform") == [0, 1, 2]  # fewer frames than asked: all
    assert select(300, 30.0, fps=1.0, max_frames=3, spread="uniform") == [29, 179, 299]  # of 29, 59, ..., 299
    with pytest.raises(ValueError, match="number of frames"):
        FrameSelection.plan(FrameSampling(max_frames=3, spread="uniform"), None).indices(None)


@pytest.mark.parametrize("total", [0, 1, 7, 31, 100])
def test_every_combination_against_a_plain_implementation(total):
    for rate, fps, stride, limit, spread in itertools.product(
        (None, 30.0, 24.0), (None, 1.0, 7.0), (1, 2, 3), (None, 1, 2, 5), ("first", "uniform")
    ):
        candidates = released_fps_rule(total, rate, fps) if rate and fps else list(range(total))
        candidates = candidates[::stride]
        if limit is None or len(candidates) <= limit:
            expected = candidates
        elif spread == "first":
            expected = candidates[:limit]
        else:
            m = len(candidates)
            expected = [candidates[int(i * (m - 1) / (limit - 1) + 0.5) if limit > 1 else 0] for i in range(limit)]
        got = select(total, rate, fps=fps, frame_stride=stride, max_frames=limit, spread=spread)
        assert got == expected, (rate, fps, stride, limit, spread)
