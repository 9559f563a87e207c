"""Device and precision choices shared by the engines."""

from __future__ import annotations

import contextlib

import torch

from zipmap_core.layers.mlp import Mlp

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None, model: torch.nn.Module) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


@contextlib.contextmanager
def _strict_float32():
    """float32 means float32: no TF32 in matrix products and convolutions on Ampere and later."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def autocast(device: torch.device, dtype_name: str):
    """bf16/fp16 autocast for the aggregator (the heads switch it off themselves). On the fast
    path too: its matrices are already bf16, so autocast casts only activations, and the residual
    stream, norms and layer scales stay float32 as in the released code."""
    if dtype_name == "float32":
        return _strict_float32() if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype_name])


NEWTON_SCHULZ_DTYPES = {"bfloat16": torch.bfloat16, "float32": None}  # None: the gradients' float32


def set_newton_schulz_precision(model: torch.nn.Module, precision: str) -> None:
    """Orthogonalise the TTT layers' fast-weight updates in `precision`: "bfloat16" as the
    released layer always does (the checkpoints' numerics, whatever the engine's dtype), or
    "float32", exact (what ../shared/reference was computed with)."""
    ns_dtype = NEWTON_SCHULZ_DTYPES[precision]
    for module in model.modules():
        if hasattr(module, "ns_dtype"):
            module.ns_dtype = ns_dtype


def float32_parameters(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """What stays float32 on the fast path: every vector of the trunk (norms, biases, layer
    scales), the learned tokens and position embeddings, which autocast would never round; the
    camera head; the TTT layers' initial fast weights (their update is accumulated and applied in
    float32); and the dense heads' last 1x1 convolution (depth is the exp of its output). With
    these, cameras match the autocast path's; rounding them moved poses by several percent."""
    dense_heads = model.dense_heads(nvs=True).values()
    keep = set(model.pose_head.parameters())
    heads = {p for head in dense_heads for p in head.parameters()}
    for name, p in model.named_parameters():
        if p not in heads and (p.dim() < 2 or name.endswith(("token", "tokens", "pos_embed"))):
            keep.add(p)
    for module in model.modules():
        if hasattr(module, "ns_dtype"):  # FastWeightSwiGLU
            keep |= {module.w0, module.w1, module.w2}
    for head in dense_heads:
        keep |= set(head.scratch.output_conv2[-1].parameters())
    return keep


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the bulk of the weights (float32 unless cast for the fast path)."""
    return model.aggregator.frame_blocks[0].attn.qkv.weight.dtype


def cast_for_inference(model: torch.nn.Module, dtype_name: str) -> None:
    """The fast path's model, made in place: weight matrices stored in bf16/fp16 (autocast then
    has nothing to cast), the dense heads in bf16 and channels-last (the released code runs them
    in float32), the transformer MLPs' GELU fused into their first GEMM on CUDA. Idempotent; a
    cast model only runs fast engines, and only in its own dtype (bf16 weights re-cast to fp16
    would be rounded twice)."""
    dtype = DTYPES[dtype_name]
    if weights_dtype(model) == dtype:
        return
    if weights_dtype(model) != torch.float32:
        raise ValueError(
            f"this model's weights were already cast to {weights_dtype(model)} for the fast path; "
            f"load a fresh model to run it in {dtype}"
        )
    keep = float32_parameters(model)
    for p in model.parameters():
        p.data = p.data.float() if p in keep else p.data.to(dtype)
    for module in model.modules():
        if isinstance(module, Mlp) and module.fc1.weight not in keep:
            module.gelu_in_gemm = True
    for head in model.dense_heads(nvs=True).values():
        head.to(memory_format=torch.channels_last)
        head.channels_last = True
