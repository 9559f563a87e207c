"""The per-sequence fast-weight update of one TTT layer (Newton-Schulz + weight norm), as the model
runs it and as two candidates that issue #6 has not measured yet: compiled, and with the layer's
three orthogonalisations batched into one (the wide orientation of w1's update is the shape of
the other two). At 50 frames this step is about 7% of a compiled run (29 ms for 24 layers on an
H200), and it does not shrink with fewer frames.

    python bench/ttt_step.py
"""

from __future__ import annotations

import argparse

import torch
from timing import gpu_time  # bench/timing.py (this script's folder is on sys.path)

from zipmap_core.layers.ttt import WEIGHT_NORM_EPS, FastWeightSwiGLU, TTTState, newton_schulz


def batched_step(ttt: FastWeightSwiGLU, state: TTTState, grads, norms) -> TTTState:
    """TTTState.step with the three orthogonalisations as one batch of wide matrices."""
    g0, g1, g2 = grads
    b = g0.shape[0]
    ortho = newton_schulz(torch.cat([g0, g1.mT, g2]), ttt.muon_steps, ttt.ns_dtype)
    updates = (ortho[:b], ortho[b : 2 * b].mT, ortho[2 * b :])
    new = []
    for w, u, n in zip((state.w0, state.w1, state.w2), updates, norms):
        w = w + u.to(w.dtype)
        new.append(w / (w.norm(dim=1, keepdim=True) + WEIGHT_NORM_EPS) * n)
    return TTTState(*new)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--head-dim", type=int, default=1024)
    args = ap.parse_args()
    ttt = FastWeightSwiGLU(args.dim, args.head_dim).cuda()
    ttt.ns_dtype = torch.bfloat16  # as on the fast path (the released code's bf16 Newton-Schulz)
    state = ttt.initial_state(1)
    norms = state.column_norms()
    grads = tuple(torch.randn_like(w) for w in (state.w0, state.w1, state.w2))
    reference = ttt.step(state, grads, norms)

    def batched(state, grads, norms):
        return batched_step(ttt, state, grads, norms)

    variants = {
        "as the model runs it": ttt.step,
        "compiled": torch.compile(ttt.step),
        "batched": batched,
        "batched, compiled": torch.compile(batched),
    }
    for name, fn in variants.items():
        out = fn(state, grads, norms)
        diff = max(
            float((a - b).abs().max() / b.abs().max())
            for a, b in zip((out.w0, out.w1, out.w2), (reference.w0, reference.w1, reference.w2))
        )
        t = gpu_time(lambda fn=fn: fn(state, grads, norms), repeats=20)
        print(f"{name:22s} {t * 1e3:7.3f} ms per layer   max relative difference {diff:.1e}")


if __name__ == "__main__":
    main()
