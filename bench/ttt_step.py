"""The per-sequence fast-weight update of one TTT layer (Newton-Schulz + weight norm): the model's
step, which orthogonalises a layer's three gradients as one batch, against orthogonalising them
one at a time (as before issue #6's fourth session) and against compiling the step.

    python bench/ttt_step.py
"""

from __future__ import annotations

import argparse

import torch
from timing import gpu_time  # bench/timing.py (this script's folder is on sys.path)

from zipmap_core.layers.ttt import WEIGHT_NORM_EPS, FastWeightSwiGLU, TTTState, newton_schulz


def one_at_a_time(ttt: FastWeightSwiGLU, state: TTTState, grads, norms) -> TTTState:
    new = []
    for w, g, n in zip((state.w0, state.w1, state.w2), grads, norms):
        w = w + newton_schulz(g, ttt.muon_steps, ttt.ns_dtype).to(w.dtype)
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

    def separate(state, grads, norms):
        return one_at_a_time(ttt, state, grads, norms)

    variants = {
        "the model's (batched)": ttt.step,
        "compiled": torch.compile(ttt.step),
        "one at a time": separate,
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
