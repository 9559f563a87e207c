"""Device and precision choices shared by the engines."""

from __future__ import annotations

import contextlib

import torch

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
    """bf16/fp16 autocast for the aggregator (the heads switch it off themselves)."""
    if dtype_name == "float32":
        return _strict_float32() if device.type == "cuda" else contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype_name])


def use_published_precision(model: torch.nn.Module, dtype_name: str) -> None:
    """Under bf16/fp16 the released code orthogonalises fast-weight updates in bf16."""
    ns_dtype = None if dtype_name == "float32" else torch.bfloat16
    for module in model.modules():
        if hasattr(module, "ns_dtype"):
            module.ns_dtype = ns_dtype
