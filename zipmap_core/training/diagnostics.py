"""Does a network relate its frames? The early signal for camera training.

A camera relative to the first frame can only be predicted by comparing frames. While the other
frames' tokens do not change when frame 0 changes, the camera head cannot beat identity poses
(the demo models' GPU runs of issue #19 sat there for 2100 steps, their influence flat), so a run
can log this from its first steps instead of waiting for the held-out camera metrics.
"""

from __future__ import annotations

import torch

from zipmap_core.models.zipmap import ZipMap
from zipmap_core.synthetic import generate_sequence
from zipmap_core.training.data import batch_from_sequences, held_out_seeds

PROBE_SEED_START = 500_000  # held out, apart from the evaluation's seeds (0.., 900000..)


@torch.no_grad()
def cross_frame_influence(model: ZipMap, images: torch.Tensor) -> dict[str, float]:
    """How much mirroring frame 0 moves the other frames' last-layer tokens (relative L2 change):
    `camera` over their camera tokens, `patches` over their patch tokens. images [B, S, 3, H, W]."""
    mirrored = images.clone()
    mirrored[:, 0] = mirrored[:, 0].flip(-1)
    was_training = model.training
    model.eval()
    try:
        last = model.config.depth - 1
        before = model.aggregator(images)[0][last][:, 1:]
        after = model.aggregator(mirrored)[0][last][:, 1:]
    finally:
        model.train(was_training)
    start = model.config.patch_start_idx

    def relative(sl) -> float:
        a, b = after[:, :, sl].float(), before[:, :, sl].float()
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    return {"camera": relative(slice(0, 1)), "patches": relative(slice(start, None))}


def probe_images(
    height: int, width: int, sequences: int = 4, frames: int = 6, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A fixed held-out batch for `cross_frame_influence` [sequences, frames, 3, H, W]."""
    rendered = [generate_sequence(s, num_frames=frames, height=height, width=width, device=device)
                for s in held_out_seeds(sequences, start=PROBE_SEED_START)]
    return batch_from_sequences(rendered).images
