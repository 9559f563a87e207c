"""Two-layer GELU MLP used by every transformer block and by the MLP camera head."""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)
        # set on the fast path (see precision.cast_for_inference): on CUDA, fc1's bias and GELU
        # then run in the GEMM's epilogue (cuBLASLt) instead of a pass over the 4x wide hidden
        # activations. The epilogue computes GELU's tanh form, within bf16 rounding of the exact
        # form (erf) that the released model uses. Not while fc1 runs in FP8 (engines/fp8.py).
        self.gelu_in_gemm = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.gelu_in_gemm and not getattr(self.fc1, "fp8", False)
        if fused and x.is_cuda and self.fc1.bias is not None:
            w = self.fc1.weight
            flat = x.reshape(-1, x.shape[-1]).to(w.dtype)
            hidden = torch._addmm_activation(self.fc1.bias.to(w.dtype), flat, w.t(), use_gelu=True)
            return self.fc2(hidden.reshape(*x.shape[:-1], -1))
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel residual scaling (CaiT); keeps deep residual stacks stable at init."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
