"""Exact nearest-neighbour distances by chunked brute force in torch.

Point clouds here are subsampled to tens of thousands of points, where blocks of a distance
matrix are fast enough and need no spatial index (and no extra dependency).
"""

from __future__ import annotations

import torch
from torch import Tensor


def nearest_distances(queries: Tensor, refs: Tensor, max_block: int = 1 << 20) -> Tensor:
    """Distance [n] from each query [n, 3] to its nearest reference point [m, 3].

    Computed in float64 around the references' centroid, which keeps |a|^2 - 2ab + |b|^2 exact
    enough even for points far from the origin. `max_block` bounds the distance-block size.
    """
    queries, refs = queries.to(torch.float64), refs.to(torch.float64)
    if refs.shape[0] == 0:
        return torch.full((queries.shape[0],), float("inf"), dtype=torch.float64)
    centre = refs.mean(0)
    q, r = queries - centre, refs - centre
    r_sq = (r * r).sum(-1)
    rows = max(1, max_block // r.shape[0])
    out = []
    for start in range(0, q.shape[0], rows):
        block = q[start : start + rows]
        partial = torch.addmm(r_sq, block, r.T, alpha=-2.0).amin(-1)  # |r|^2 - 2 q.r, row-wise min
        out.append((partial + (block * block).sum(-1)).clamp_min(0.0).sqrt())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
