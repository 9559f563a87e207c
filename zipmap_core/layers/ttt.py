"""Test-time training layer: a SwiGLU fast-weight MLP trained on the fly on the tokens it mixes.

For every head, the fast weights (w0, w1, w2) define f(x) = (silu(x @ w0) * (x @ w2)) @ w1. An
*update* over a span of tokens takes one gradient step on the inner loss -sum_t lr_t <f(k_t), v_t>
(per-token learning rates), orthogonalises each step with Newton-Schulz (Muon) and renormalises
every column to its norm before the update (weight norm). An *apply* reads the span's queries
through the current fast weights. A schedule of (start, end, update, apply) operations over the
token sequence defines the mode: update-all-then-apply-all is bidirectional reconstruction;
alternating per window is streaming.

The gradient of a span is a plain sum over its tokens, so it can be accumulated chunk by chunk
(`fast_weight_gradients` + `TTTState.step`): this is what the chunked engine relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from zipmap_core.layers.rope import RopeTables, rotate

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # quintic Newton-Schulz coefficients (Muon)
WEIGHT_NORM_EPS = 1e-5
QK_NORM_EPS = 1e-5


@dataclass(frozen=True)
class TTTOp:
    """One step of a schedule over token indices [start, end); end=None means the last token."""

    start: int
    end: int | None
    update: bool
    apply: bool


def bidirectional_schedule() -> list[TTTOp]:
    return [TTTOp(0, None, update=True, apply=False), TTTOp(0, None, update=False, apply=True)]


def apply_only_schedule() -> list[TTTOp]:
    """Read every token through given fast weights without training them (rendering from a
    stored scene state)."""
    return [TTTOp(0, None, update=False, apply=True)]


def query_schedule(num_input_tokens: int) -> list[TTTOp]:
    """Train on the input frames' tokens only, then read every token: query views appended after
    the inputs are answered from the inputs' fast weights (the released training path)."""
    return [TTTOp(0, num_input_tokens, update=True, apply=False), TTTOp(0, None, update=False, apply=True)]


def windowed_schedule(num_tokens: int, window_tokens: int) -> list[TTTOp]:
    """Streaming: each window first updates the fast weights, then is read with them."""
    ops = []
    for start in range(0, num_tokens, window_tokens):
        end = min(start + window_tokens, num_tokens)
        ops += [TTTOp(start, end, update=True, apply=False), TTTOp(start, end, update=False, apply=True)]
    return ops


class TTTInputs(NamedTuple):
    """Per-head projections of a span of tokens; heads are folded into the batch: [B*h, L, d]."""

    q: torch.Tensor | None  # None when only an update was asked for (`project(x, queries=False)`)
    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor  # [B*h, L, 3] float32: learning rates of w0, w1, w2


def _token_slice(inputs: TTTInputs, span: slice) -> TTTInputs:
    return TTTInputs(*(None if t is None else t[:, span] for t in inputs))


def _per_token(tables: RopeTables) -> RopeTables:
    """[1, 1, L, d] tables -> [1, L, d], to broadcast over the [B*h, L, d] heads."""
    return RopeTables(tables.cos[0], tables.sin[0])


def inverse_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


def gate_and_up(w0: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ w0, x @ w2) as one GEMM: the two products share their input."""
    return (x @ torch.cat([w0, w2], dim=-1)).chunk(2, dim=-1)


def swiglu(w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """f(x) = (silu(x @ w0) * (x @ w2)) @ w1."""
    gate, up = gate_and_up(w0, w2, x)
    return (F.silu(gate) * up) @ w1


def newton_schulz(g: torch.Tensor, steps: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise each matrix of a batch [b, m, n] (U S' V^T with S' ~ 1)."""
    x = g.to(dtype or g.dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.transpose(-1, -2)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.transpose(-1, -2)
    return x


# the weight-gradient products reduce over every token into a few small matrices: split the token
# sum into this many batched GEMMs (when the tokens divide evenly) so that they fill the GPU
TOKEN_SUM_SPLITS = 4


def token_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over tokens t of a_t^T b_t: [batch, L, m] x [batch, L, n] -> [batch, m, n] in float32.

    One GEMM with a 1024x2048 output has too few tiles for the GPU's multiprocessors and a
    reduction over up to a million tokens; splitting the reduction into batched parts (views, no
    copy) gives the GEMM library the parallelism, and the parts are summed in float32.
    """
    batch, L, m = a.shape
    parts = next((p for p in range(TOKEN_SUM_SPLITS, 1, -1) if L % p == 0 and L // p >= 1024), 1)
    a = a.reshape(batch * parts, L // parts, m)
    b = b.reshape(batch * parts, L // parts, b.shape[-1])
    out = (a.transpose(-1, -2) @ b).float()
    return out.reshape(batch, parts, m, -1).sum(dim=1)


def fast_weight_gradients(
    w0: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Learning-rate-weighted descent directions of the negative-dot-product loss, summed over tokens.

    Returns (d_w0 [b, d, dh], d_w1 [b, dh, d], d_w2 [b, d, dh]) in float32. The products run in
    the tokens' dtype (bf16 on the fast path, where the fast weights themselves stay float32).
    The order of operations is the released code's: the reference model (random weights) turns
    float32 rounding differences into visible pose differences.
    """
    dtype = k.dtype
    gate, up = gate_and_up(w0.to(dtype), w2.to(dtype), k)
    silu_gate = F.silu(gate)
    d_hidden = v @ w1.to(dtype).transpose(-1, -2)
    sig = torch.sigmoid(gate)
    d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))
    lr = lr.to(dtype)
    d_w1 = token_sum(silu_gate * up * lr[..., 1:2], v)
    d_w0 = token_sum(k * lr[..., 0:1], d_gate)
    d_w2 = token_sum(k * lr[..., 2:3], d_hidden * silu_gate)
    return d_w0, d_w1, d_w2


@dataclass
class TTTState:
    """Fast weights of every (batch, head): w0 [B*h, d, dh], w1 [B*h, dh, d], w2 [B*h, d, dh]."""

    w0: torch.Tensor
    w1: torch.Tensor
    w2: torch.Tensor

    def column_norms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(w.detach().norm(dim=1, keepdim=True) for w in (self.w0, self.w1, self.w2))

    def step(
        self,
        grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        norms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        ns_steps: int,
        ns_dtype: torch.dtype | None = None,
    ) -> TTTState:
        """Apply one orthogonalised update, then pull every column back to its norm in `norms`.

        The three gradients are orthogonalised as one batch (w1's transposed to the shape of the
        other two): the same per-matrix result, one third of the small GEMM launches."""
        g0, g1, g2 = grads
        u0, u1, u2 = newton_schulz(torch.cat([g0, g1.mT, g2]), ns_steps, ns_dtype).split(g0.shape[0])
        new = []
        for w, u, n in zip((self.w0, self.w1, self.w2), (u0, u1.mT, u2), norms):
            w = w + u.to(w.dtype)
            new.append(w / (w.norm(dim=1, keepdim=True) + WEIGHT_NORM_EPS) * n)
        return TTTState(*new)

    def to(self, *args, **kwargs) -> TTTState:
        return TTTState(self.w0.to(*args, **kwargs), self.w1.to(*args, **kwargs), self.w2.to(*args, **kwargs))


class FastWeightSwiGLU(nn.Module):
    """The TTT token mixer (state-dict names follow the published checkpoints)."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        inter_multi: float = 2.0,
        bias: bool = True,
        base_lr: float = 0.01,
        muon_steps: int = 5,
        use_gate: bool = True,
    ):
        super().__init__()
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.muon_steps = muon_steps
        # the released layer orthogonalises in bfloat16 whatever the input dtype (it casts even
        # without autocast): the checkpoints' numerics. None: in the gradients' own float32 (exact)
        self.ns_dtype: torch.dtype | None = torch.bfloat16
        hidden = int(head_dim * inter_multi)
        gain = math.sqrt(2.0)
        self.w0 = nn.Parameter(torch.randn(self.num_heads, head_dim, hidden) * gain / math.sqrt(head_dim))
        self.w1 = nn.Parameter(torch.randn(self.num_heads, hidden, head_dim) * gain / math.sqrt(hidden))
        self.w2 = nn.Parameter(torch.randn(self.num_heads, head_dim, hidden) * gain / math.sqrt(head_dim))
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.lr_fc = nn.Linear(dim, 3 * self.num_heads)
        self.base_lr_inv = inverse_softplus(base_lr)
        self.gate_fn = nn.Sequential(nn.Linear(dim, dim, bias=bias), nn.SiLU()) if use_gate else None
        self.o_norm = nn.RMSNorm(head_dim, eps=1e-5)

    def initial_state(self, batch: int) -> TTTState:
        return TTTState(self.w0.repeat(batch, 1, 1), self.w1.repeat(batch, 1, 1), self.w2.repeat(batch, 1, 1))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, L, h*d] -> [B*h, L, d]"""
        B, L, _ = t.shape
        return t.reshape(B, L, self.num_heads, -1).transpose(1, 2).reshape(B * self.num_heads, L, -1)

    def _plain_qkv(self) -> bool:
        """Whether to_qkv is a plain linear layer, whose weight rows the projections may take apart
        and join with lr_fc's; a subclass swapped in (the FP8 one) runs its own forward."""
        return type(self.to_qkv) is nn.Linear

    def project(self, x: torch.Tensor, queries: bool = True, value_rope: RopeTables | None = None) -> TTTInputs:
        """x: normalised block input [B, L, dim]. One GEMM makes the queries, keys, values and
        learning rates, which share their input (`lr_fc` alone, 3 x heads wide, is too narrow
        for an efficient GEMM of its own). Without `queries` (an update that reads nothing back:
        the chunked engine's first pass) that GEMM leaves out the query rows and q is None.
        `value_rope` (tables of the L tokens, [1, 1, L, head_dim]) rotates the values by their
        tokens' positions; `output` then rotates the read-out back by the queries' (see
        `zipmap_core.layers.attention` for why)."""
        dim = x.shape[-1]
        first = 0 if queries else dim  # row of to_qkv where the GEMM starts
        if self._plain_qkv():
            qkv_bias = self.to_qkv.bias if self.to_qkv.bias is not None else self.to_qkv.weight.new_zeros(3 * dim)
            weight = torch.cat([self.to_qkv.weight[first:], self.lr_fc.weight])
            out = F.linear(x, weight, torch.cat([qkv_bias[first:], self.lr_fc.bias]))
            qkv, lr = out.split([3 * dim - first, self.lr_fc.out_features], dim=-1)
        else:
            qkv, lr = self.to_qkv(x)[..., first:], self.lr_fc(x)
        heads = [self._heads(t) for t in F.silu(qkv).chunk(3 - first // dim, dim=-1)]
        q = heads.pop(0) if queries else None
        k, v = heads
        if value_rope is not None:
            v = rotate(v, _per_token(value_rope))
        if q is not None:
            q = q / (q.norm(dim=-1, keepdim=True) + QK_NORM_EPS)
        k = k / (k.norm(dim=-1, keepdim=True) + QK_NORM_EPS)
        lr = F.softplus(lr.float() + self.base_lr_inv)  # [B, L, 3h], ordered (which, head)
        B, L, _ = lr.shape
        lr = lr.reshape(B, L, 3, self.num_heads).permute(0, 3, 1, 2).reshape(B * self.num_heads, L, 3)
        return TTTInputs(q, k, v, lr)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Only the normalised queries of `project` (the chunked engine recomputes them cheaply
        instead of keeping them for every frame)."""
        dim = x.shape[-1]
        if self._plain_qkv():
            bias = None if self.to_qkv.bias is None else self.to_qkv.bias[:dim]
            q = F.linear(x, self.to_qkv.weight[:dim], bias)
        else:
            q = self.to_qkv(x)[..., :dim]
        q = self._heads(F.silu(q))
        return q / (q.norm(dim=-1, keepdim=True) + QK_NORM_EPS)

    def gradients(self, state: TTTState, inputs: TTTInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fast_weight_gradients(state.w0, state.w1, state.w2, inputs.k, inputs.v, inputs.lr)

    def gradients_in_slices(self, state: TTTState, inputs: TTTInputs, tokens_per_slice: int = 131072):
        """`gradients` summed over slices of the span: the same sum, with the [L, hidden]
        temporaries bounded by the slice instead of growing with the sequence."""
        L = inputs.k.shape[1]
        if L <= tokens_per_slice:
            return self.gradients(state, inputs)
        total = None
        for start in range(0, L, tokens_per_slice):
            part = self.gradients(state, _token_slice(inputs, slice(start, start + tokens_per_slice)))
            total = part if total is None else tuple(a + b for a, b in zip(total, part))
        return total

    def step(self, state: TTTState, grads, norms) -> TTTState:
        return state.step(grads, norms, self.muon_steps, self.ns_dtype)

    def read(self, state: TTTState, q: torch.Tensor) -> torch.Tensor:
        return swiglu(state.w0.to(q.dtype), state.w1.to(q.dtype), state.w2.to(q.dtype), q)

    def output(self, o: torch.Tensor, x: torch.Tensor, value_rope: RopeTables | None = None) -> torch.Tensor:
        """Fast-weight read-out [B*h, L, d] -> block output [B, L, dim]."""
        if value_rope is not None:
            o = rotate(o, _per_token(value_rope), inverse=True)
        o = self.o_norm(o.to(self.o_norm.weight.dtype))  # one dtype: the fused kernel (bf16 reads under autocast)
        Bh, L, d = o.shape
        o = o.reshape(Bh // self.num_heads, self.num_heads, L, d).transpose(1, 2).reshape(-1, L, self.num_heads * d)
        if self.gate_fn is not None:
            o = o * self.gate_fn(x)
        return self.c_proj(o)

    def forward(
        self,
        x: torch.Tensor,
        schedule: list[TTTOp],
        state: TTTState | None = None,
        value_rope: RopeTables | None = None,
    ) -> tuple[torch.Tensor, TTTState]:
        inputs = self.project(x, value_rope=value_rope)
        if state is None:
            state = self.initial_state(x.shape[0])
        norms = state.column_norms()
        outputs = []
        for op in schedule:
            span = slice(op.start, op.end)
            if op.update:
                span_inputs = _token_slice(inputs, span)
                state = self.step(state, self.gradients_in_slices(state, span_inputs), norms)
            if op.apply:
                outputs.append(self.read(state, inputs.q[:, span]))
        return self.output(torch.cat(outputs, dim=1), x, value_rope), state
