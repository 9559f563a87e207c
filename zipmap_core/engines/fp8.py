"""FP8 linear layers for the trunk (exploratory, opt-in: `EngineConfig(fp8=True)`).

The aggregator's big linear layers (attention qkv/proj and MLP fc1/fc2 of the DINOv2, frame and
global blocks; the TTT mixer's to_qkv, c_proj and gate) multiply in float8 e4m3 with row-wise
scales: every row of the activations and every output row of the weight gets its own float32
scale (its absolute maximum over 448, e4m3's largest value), the product runs in `torch._scaled_mm`
(FP8 tensor cores on Hopper, fast accumulation) and comes out in bf16; the activations are
quantised by a compiled kernel on the fly, the weights once. Not converted: the heads, the TTT learning
rates (3 outputs per head) and the fast weights (their update is accumulated in float32).

`set_fp8(model, True)` swaps those `nn.Linear` modules for `Fp8Linear` (a subclass: same
parameters, same state-dict names) once, then toggles them; with fp8 off they are plain
`nn.Linear`s again, so one model runs both ways. Off CUDA the same quantised products are
computed in float32 (for tests of the plumbing and of the numbers, not for speed).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448
_ALIGN = 16  # _scaled_mm needs both matrix dimensions of the weight divisible by 16


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], float32 scales [M, 1]) with x ~ q * scale, row by row."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


@functools.cache
def _fused_quantize_rows():
    return torch.compile(quantize_rows, dynamic=True)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows`, on CUDA as torch.compile'd fused kernels (eager, it is five passes over
    float32 copies of the activations, which would cost more than the FP8 GEMM saves; the first
    call compiles, a few seconds); inside a compiled model dynamo fuses it with its neighbours."""
    if not x.is_cuda or torch.compiler.is_compiling():
        return quantize_rows(x)
    return _fused_quantize_rows()(x)


def scaled_matmul(
    xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(xq * x_scale) @ (wq * w_scale^T)^T + bias: xq [M, K], wq [N, K] e4m3, scales [M, 1] and [1, N]."""
    if xq.is_cuda:  # row-major x column-major, rowwise scales, bf16 out (FP8 tensor cores)
        return torch._scaled_mm(
            xq, wq.t(), scale_a=x_scale, scale_b=w_scale, bias=bias, out_dtype=out_dtype, use_fast_accum=True
        )
    out = (xq.float() * x_scale) @ (wq.float() * w_scale.t()).t()  # the same products, exact in float32
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


class Fp8Linear(nn.Linear):
    """An `nn.Linear` that, while `fp8` is set, multiplies in e4m3 with row-wise scales, its
    weight quantised by `set_fp8` (after the model is cast and moved) and kept."""

    fp8: bool = False
    weight_fp8: tuple[torch.Tensor, torch.Tensor] | None = None  # (e4m3 [N, K], scales [1, N])
    _quantized_from: tuple | None = None  # which weight (storage, dtype) weight_fp8 was made from

    def quantize_weight(self) -> None:
        source = (self.weight.data_ptr(), self.weight.dtype, self.weight.device)
        if self._quantized_from != source:  # new, or the weight was cast or moved since
            wq, scale = quantize_rows(self.weight.detach())
            self.weight_fp8 = wq, scale.reshape(1, -1)
            self._quantized_from = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fp8:
            return super().forward(x)
        out_dtype = torch.bfloat16 if self.weight.dtype == torch.float32 else self.weight.dtype
        wq, w_scale = self.weight_fp8
        xq, x_scale = quantize_activations(x.reshape(-1, x.shape[-1]))
        bias = None if self.bias is None else self.bias.to(out_dtype)
        out = scaled_matmul(xq, x_scale, wq, w_scale, bias, out_dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def fp8_candidates(model: nn.Module) -> list[nn.Linear]:
    """Every aggregator linear layer that FP8 covers (both dimensions divisible by 16)."""
    return [
        m for m in model.aggregator.modules()
        if isinstance(m, nn.Linear) and m.in_features % _ALIGN == 0 and m.out_features % _ALIGN == 0
    ]


def set_fp8(model: nn.Module, enabled: bool) -> int:
    """Run the trunk's big linear layers in FP8 (or not); returns how many layers that covers."""
    layers = fp8_candidates(model)
    if not enabled and not any(isinstance(layer, Fp8Linear) for layer in layers):
        return 0
    for layer in layers:
        if not isinstance(layer, Fp8Linear):
            layer.__class__ = Fp8Linear  # same parameters and names: checkpoints still load strictly
        layer.fp8 = enabled
        if enabled:
            layer.quantize_weight()
    return len(layers)


def fp8_enabled(model: nn.Module) -> bool:
    return any(isinstance(m, Fp8Linear) and m.fp8 for m in model.modules())
