"""Training batches rendered on the fly by `zipmap_core.synthetic`, on the training device.

Rendering a sequence costs about as much as a training step, so batches are drawn from a pool of
rendered sequences that is refreshed as training goes (oldest out first): every step takes a
random number of frames from a few pool sequences, and a fraction of a new sequence is rendered
per step. Seeds come from a seeded generator, so two runs with the same settings see exactly the
same data, and training seeds are never below `TRAIN_SEED_START`: every seed under it is
held out for evaluation.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from zipmap_core.synthetic import SyntheticSequence, generate_sequence

TRAIN_SEED_START = 1_000_000  # seeds [0, TRAIN_SEED_START) are never trained on
TRAIN_SEED_END = 2**31 - 1


def held_out_seeds(count: int, start: int = 0) -> list[int]:
    """Seeds for evaluation that no training run draws."""
    if start + count > TRAIN_SEED_START:
        raise ValueError(f"held-out seeds must stay below {TRAIN_SEED_START}")
    return list(range(start, start + count))


@dataclass(frozen=True)
class Batch:
    """B sequences of S frames: model inputs and ground truth, all on one device."""

    images: Tensor  # [B, S, 3, H, W] float32 in [0, 1]
    depth: Tensor  # [B, S, H, W]
    valid: Tensor  # [B, S, H, W] bool
    extrinsics: Tensor  # [B, S, 3, 4] camera-from-world
    intrinsics: Tensor  # [B, S, 3, 3]
    world_points: Tensor  # [B, S, H, W, 3]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.images.shape[0]), int(self.images.shape[1])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def batch_from_sequences(sequences: list[SyntheticSequence], frames: list[list[int]] | None = None) -> Batch:
    """Stack sequences (optionally a list of frame indices of each, all of one length) into a batch."""
    if frames is None:
        frames = [list(range(seq.num_frames)) for seq in sequences]
    if len({len(f) for f in frames}) != 1:
        raise ValueError("every sequence of a batch needs the same number of frames")

    def stack(name: str) -> Tensor:
        return torch.stack(
            [getattr(seq, name)[torch.as_tensor(idx, device=seq.images.device)] for seq, idx in zip(sequences, frames)]
        )

    images = stack("images").permute(0, 1, 4, 2, 3).float() / 255.0
    return Batch(
        images=images,
        depth=stack("depth"),
        valid=stack("valid"),
        extrinsics=stack("extrinsics"),
        intrinsics=stack("intrinsics"),
        world_points=stack("world_points"),
    )


def crop_height(batch: Batch, height: int) -> Batch:
    """Centre crop of the image rows to `height`; the principal point stays at the image centre
    (the model's pose encoding assumes it there), so `height` must leave an even margin."""
    margin = batch.images.shape[-2] - height
    if margin < 0 or margin % 2:
        raise ValueError(f"cannot centre-crop {batch.images.shape[-2]} rows to {height}")
    if margin == 0:
        return batch
    top = margin // 2
    rows = slice(top, top + height)
    intrinsics = batch.intrinsics.clone()
    intrinsics[..., 1, 2] -= top
    return Batch(
        images=batch.images[..., rows, :],
        depth=batch.depth[..., rows, :],
        valid=batch.valid[..., rows, :],
        extrinsics=batch.extrinsics,
        intrinsics=intrinsics,
        world_points=batch.world_points[..., rows, :, :],
    )


def crop_heights(height: int, multiple: int, min_ratio: float) -> list[int]:
    """Heights of landscape centre crops: multiples of `multiple` (the patch size) down to
    min_ratio * height, with an even margin, the full height first."""
    out = [height]
    h = (height // multiple) * multiple
    while h >= min_ratio * height:
        if h != height and (height - h) % 2 == 0:
            out.append(h)
        h -= multiple
    return out


class SyntheticBatches:
    """An endless stream of training batches.

    Each batch has S frames per sequence, S uniform in [min_frames, max_frames], and
    frames_per_batch // S sequences, so the cost of a step stays about constant whatever S is.
    The frames of a sequence are a sorted random subset of one pool sequence of `pool_frames`
    frames (so the baseline between frames varies), reversed half of the time. With
    `crop_multiple` set, every batch is centre-cropped to a random height (a multiple of it, at
    least `min_crop_ratio` of the full height): images preprocessed for the model are `size`
    wide and at most as high, so the model has to work at landscape aspect ratios too.

    With `curriculum` c > 0, the first fraction c of the run (`progress`, set by the trainer)
    starts easy and ramps up linearly: sequences of `min_frames` frames that are neighbours in
    the rendered path (small camera motion, large overlap), growing to `max_frames` frames spread
    over the whole path. Relative poses are learnt from matching frames; wide baselines and long
    sequences make that matching hard before the features are any good.
    """

    def __init__(
        self,
        *,
        height: int,
        width: int,
        min_frames: int = 2,
        max_frames: int = 12,
        frames_per_batch: int = 48,
        pool_size: int = 128,
        pool_frames: int = 16,
        new_per_step: float = 0.5,
        seed: int = 0,
        device: torch.device | str = "cpu",
        crop_multiple: int | None = None,
        min_crop_ratio: float = 0.5,
        curriculum: float = 0.0,
    ):
        if not 1 <= min_frames <= max_frames <= pool_frames:
            raise ValueError("need 1 <= min_frames <= max_frames <= pool_frames")
        if pool_size < 1 or frames_per_batch < 1 or new_per_step < 0:
            raise ValueError("pool_size and frames_per_batch must be positive, new_per_step >= 0")
        self.height, self.width = height, width
        self.min_frames, self.max_frames = min_frames, max_frames
        self.frames_per_batch = frames_per_batch
        self.pool_size, self.pool_frames = pool_size, pool_frames
        self.new_per_step = new_per_step
        self.device = torch.device(device)
        self.heights = crop_heights(height, crop_multiple, min_crop_ratio) if crop_multiple else [height]
        self.curriculum = curriculum
        self.progress = 0.0  # of the training run, in [0, 1]; the trainer keeps it current
        self.rng = random.Random(seed)
        self.pool: deque[SyntheticSequence] = deque()
        self.pool_seeds: deque[int] = deque()  # the seed of each pool sequence, in pool order
        self.rendered = 0  # sequences rendered so far
        self._owed = 0.0  # fractional sequences owed to the pool

    def clone(self) -> SyntheticBatches:
        """A copy that yields exactly the batches this one would yield from now on, sharing the
        rendered pool (read-only tensors): a second model trains on the same data without
        rendering the pool again."""
        twin = copy.copy(self)
        twin.rng = random.Random()
        twin.rng.setstate(self.rng.getstate())
        twin.pool = deque(self.pool)
        twin.pool_seeds = deque(self.pool_seeds)
        return twin

    def state_dict(self) -> dict:
        """What a resumed run needs to yield the batches this one would have yielded next: the
        generator's state and the pool's seeds (the pool itself is rendered again, not stored)."""
        return {
            "rng": self.rng.getstate(),
            "pool_seeds": list(self.pool_seeds),
            "rendered": self.rendered,
            "owed": self._owed,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` of a stream with the same settings (renders its pool)."""
        self.rng.setstate(state["rng"])
        self.pool.clear()
        self.pool_seeds.clear()
        for seed in state["pool_seeds"]:
            self._append(seed)
        self.rendered = state["rendered"]
        self._owed = state["owed"]

    def _append(self, seed: int) -> None:
        size = {"height": self.height, "width": self.width}
        self.pool.append(generate_sequence(seed, num_frames=self.pool_frames, device=self.device, **size))
        self.pool_seeds.append(seed)

    def render_one(self) -> None:
        """Render a new training sequence into the pool."""
        self.rendered += 1
        self._append(self.rng.randrange(TRAIN_SEED_START, TRAIN_SEED_END))

    def fill(self) -> None:
        """Render the initial pool (called by the first batch if not before)."""
        while len(self.pool) < self.pool_size:
            self.render_one()

    def refresh(self) -> None:
        """Replace the oldest pool sequences by `new_per_step` new ones (on average)."""
        self._owed += self.new_per_step
        while self._owed >= 1.0:
            self._owed -= 1.0
            self.pool.popleft()
            self.pool_seeds.popleft()
            self.render_one()

    def sample(self) -> Batch:
        """One batch from the current pool (no rendering)."""
        self.fill()
        ramp = 1.0 if self.curriculum <= 0 else min(1.0, self.progress / self.curriculum)
        frames = self.rng.randint(self.min_frames, self.min_frames + round((self.max_frames - self.min_frames) * ramp))
        span = frames + round((self.pool_frames - frames) * ramp)
        count = max(1, self.frames_per_batch // frames)
        picks = (
            self.rng.sample(range(len(self.pool)), count)
            if count <= len(self.pool)
            else [self.rng.randrange(len(self.pool)) for _ in range(count)]
        )
        sequences, indices = [], []
        for pick in picks:
            first = self.rng.randrange(self.pool_frames - span + 1) if span < self.pool_frames else 0
            idx = sorted(self.rng.sample(range(first, first + span), frames))
            if self.rng.random() < 0.5:
                idx.reverse()
            sequences.append(self.pool[pick])
            indices.append(idx)
        return crop_height(batch_from_sequences(sequences, indices), self.rng.choice(self.heights))

    def __iter__(self) -> SyntheticBatches:
        return self

    def __next__(self) -> Batch:
        batch = self.sample()
        self.refresh()
        return batch
