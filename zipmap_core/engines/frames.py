"""Turn batched head outputs into per-frame host results."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from zipmap_core.engines.results import FramePrediction
from zipmap_core.geometry import invert_rigid, local_to_world, to_homogeneous


def align_to_reference(extrinsics: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Camera-from-world [..., 3, 4] re-expressed in the frame of `reference` [3, 4] (frame 0)."""
    return extrinsics @ to_homogeneous(invert_rigid(reference))


class HostCopies:
    """GPU tensors on their way to the host through pinned memory, all in flight at once.

    A copy into pageable memory runs at a few GB/s and blocks; into page-locked memory it runs at
    the bus speed. The pinned blocks come from torch's caching host allocator, so a long-lived
    engine reuses them instead of page-locking fresh memory for every sequence. Host tensors (and
    None) pass through. `arrays` waits for the copies, from any thread."""

    def __init__(self, *tensors: torch.Tensor | None):
        self._out, self._done = [], None
        for t in tensors:
            if t is not None and t.device.type == "cuda":
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t = host
                if self._done is None:
                    self._done = torch.cuda.Event()
            self._out.append(t)
        if self._done is not None:
            self._done.record()

    def arrays(self) -> list[np.ndarray | None]:
        if self._done is not None:
            self._done.synchronize()
        return [None if t is None else t.numpy() for t in self._out]


def host_arrays(*tensors: torch.Tensor | None) -> list[np.ndarray | None]:
    """Copy GPU tensors to the host (see `HostCopies`) and wait once."""
    return HostCopies(*tensors).arrays()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy host frames to the GPU through pinned memory, without waiting for the GPU.

    From pageable memory CUDA copies through staging buffers of its own, a part at a time, which
    can hold the host thread until the stream's earlier kernels are done (the queue then runs dry
    at every chunk; not measured apart). Staged through a pinned block of torch's caching host
    allocator (reused once the copy that read it is done), the copy is queued behind them instead."""
    if device.type != "cuda" or t.device.type != "cpu" or t.is_pinned():
        return t.to(device, non_blocking=True)
    staged = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    staged.copy_(t)
    return staged.to(device, non_blocking=True)


def frame_colours(images: torch.Tensor) -> torch.Tensor:
    """Model input images [S, 3, H, W] (floats in [0, 1]) as the colours results carry: uint8
    [S, H, W, 3]. Four passes over float images: on a host, slower than decoding them on a GPU."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


class PendingFrames:
    """A chunk of frames' predictions on their way to the host.

    Made on the thread that drives the GPU: it queues the last GPU work and the copies and
    returns at once. `collect` (any thread) waits for the copies and does the host-side work, so
    an engine can hand it to a worker and queue the next chunk's kernels meanwhile.

    images [S, 3, H, W] (host or device); aligned cameras [S, 3, 4] / [S, 3, 3]; dense maps
    [1, S, ...]. Only depth and confidence (and local points when the head ran) leave the GPU:
    colours come from the input images (converted on the host when they are there and no
    `colours` were given) and world points are derived on the host when asked for.
    """

    def __init__(
        self,
        first_index: int,
        images: torch.Tensor,
        extrinsics: torch.Tensor,
        intrinsics: torch.Tensor,
        dense: dict[str, torch.Tensor],
        colours: torch.Tensor | None = None,
    ):
        """`colours`: `frame_colours(images)` if already made (host or device)."""
        local = dense.get("local_points")
        if local is not None:
            local = local_to_world(local[0].float(), extrinsics.float().to(local.device))
        self._first, self._images = first_index, images
        if colours is None and images.device.type == "cuda":
            colours = frame_colours(images)
        depth_conf = torch.stack([dense["depth"][0, ..., 0], dense["depth_conf"][0]]).float()
        self._copies = HostCopies(depth_conf, local, colours, extrinsics.float(), intrinsics.float())

    def collect(self) -> list[FramePrediction]:
        depth_conf, local, rgb, ext, K = self._copies.arrays()
        if rgb is None:
            rgb = frame_colours(self._images).numpy()
        return [
            FramePrediction(
                index=self._first + s,
                extrinsic=ext[s],
                intrinsic=K[s],
                depth=depth_conf[0, s],
                depth_conf=depth_conf[1, s],
                image=rgb[s],
                camera_conf=float(depth_conf[1, s].mean(dtype=np.float64)),
                local_points=None if local is None else local[s],
            )
            for s in range(depth_conf.shape[1])
        ]


def frame_predictions(
    first_index: int,
    images: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    dense: dict[str, torch.Tensor],
) -> Iterator[FramePrediction]:
    """Every frame's prediction on the host (`PendingFrames`, collected at once)."""
    yield from PendingFrames(first_index, images, extrinsics, intrinsics, dense).collect()
