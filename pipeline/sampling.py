"""Which frames of a sequence the model sees: the released fps rule, a stride, at most N frames.

The steps apply in that order and all reduce to one arithmetic progression of source indices
(`offset + j * step`), of which the first N, or N evenly spread, are kept. A video's frames are
numbered in decoding order from 0; an image folder's in natural name order.

The fps rule is the released demo's (TooCoolLa/ZipMap, demo_gradio_zipmap.py:232 and :236-243,
`handle_uploads`, commit 171db33): `frame_interval = max(1, int(round(video_fps / fps)))`, frames
counted from 1 as they are read, and frame `count` kept when `count % frame_interval == 0`; that
is 0-based indices interval-1, 2*interval-1, ... (at 1 fps a 30 fps video gives 29, 59, 89, ...).
It counts frames, not timestamps, as the released demo does, so on a variable-frame-rate video the
kept frames follow the average rate.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .spec import FrameSampling


@dataclass(frozen=True)
class FrameSelection:
    """Source indices offset, offset + step, ...; then at most `limit`, first or spread."""

    offset: int = 0
    step: int = 1
    limit: int | None = None
    uniform: bool = False

    @classmethod
    def plan(cls, sampling: FrameSampling, rate: float | None) -> FrameSelection:
        """The selection for a sequence whose frames come at `rate` per second (None: unknown).

        `sampling.fps` applies only when the rate is known; without it every frame is a candidate.
        """
        interval = 1
        if sampling.fps is not None and rate is not None and rate > 0:
            interval = max(1, int(round(rate / sampling.fps)))  # Python's round, as released
        return cls(
            offset=interval - 1,
            step=interval * sampling.frame_stride,
            limit=sampling.max_frames,
            uniform=sampling.spread == "uniform",
        )

    @property
    def needs_total(self) -> bool:
        """Spreading frames evenly needs the number of frames before the first is decoded."""
        return self.uniform and self.limit is not None

    def candidates(self, total: int) -> int:
        """How many source indices of `total` frames pass the fps rule and the stride."""
        return max(0, (total - self.offset + self.step - 1) // self.step)

    def indices(self, total: int | None = None) -> Iterator[int]:
        """The kept source indices in ascending order. `total` (the number of source frames)
        may be None when not `needs_total`; the caller then stops at the end of its frames."""
        if total is None:
            if self.needs_total:
                raise ValueError("a uniform spread needs the number of frames")
            picks: Iterator[int] = itertools.count() if self.limit is None else iter(range(self.limit))
        else:
            picks = iter(self._picks(self.candidates(total)))
        return (self.offset + j * self.step for j in picks)

    def _picks(self, m: int) -> range | list[int]:
        """Which of `m` candidates are kept: all, the first `limit`, or `limit` spread evenly
        (first and last included: j_i = round(i * (m - 1) / (limit - 1)), halves rounded up)."""
        n = self.limit
        if n is None or m <= n:
            return range(m)
        if not self.uniform:
            return range(n)
        if n == 1:
            return [0]
        return [(2 * i * (m - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]

    def describe(self) -> str:
        """For error messages: how the frames were chosen."""
        parts = [f"every {self.step}th frame from frame {self.offset}"] if self.step > 1 or self.offset else []
        if self.limit is not None:
            parts.append(f"at most {self.limit} ({'spread uniformly' if self.uniform else 'the first'})")
        return ", ".join(parts) or "every frame"


@dataclass(frozen=True)
class ChosenFrames:
    """Exactly these source indices: the frames a finished run recorded, to decode them again
    (its sampling may have come from a manifest row the run did not keep)."""

    chosen: tuple[int, ...]
    needs_total = False

    @classmethod
    def of(cls, indices: Sequence[int]) -> ChosenFrames:
        return cls(tuple(sorted(set(indices))))

    def indices(self, total: int | None = None) -> Iterator[int]:
        return (i for i in self.chosen if total is None or i < total)

    def describe(self) -> str:
        return f"the {len(self.chosen)} frames the run recorded"
