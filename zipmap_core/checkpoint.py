"""Loading and saving ZipMap checkpoints from local paths or fsspec URLs.

Released checkpoints come as `.pt` files holding either a bare state dict or a wrapper such as
`{"model": ..., "ema": ...}`; training code may add a DDP `module.` prefix. Everything here
normalises those forms to a plain `{name: tensor}` dict, and a mismatch with the model is
reported in terms a user can act on (which preset, which option) instead of a wall of keys.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from typing import Any

import fsspec
import safetensors.torch
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn

__all__ = ["CheckpointError", "check_checkpoint_file", "load_checkpoint", "load_state_dict", "save_checkpoint"]

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
# Prefixes added by wrappers (DDP, torch.compile) that never belong to the bare model.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# How many names each list of a mismatch report shows before "... and N more".
MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


# --- reading ---------------------------------------------------------------------------------


def load_state_dict(
    uri: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
    use_ema: bool = False,
) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a plain `{name: tensor}` dict on the CPU.

    `.pt`/`.pth`/`.bin` files are read with `torch.load(weights_only=True)`, `.safetensors`
    with safetensors. Wrappers `{"model": sd, "ema": sd, ...}` and `{"state_dict": sd}` are
    unwrapped (`use_ema` selects the EMA weights), and a `module.` prefix on every key is
    stripped.
    """
    uri = os.fspath(uri)
    raw = _read(uri, storage_options or {})
    state = _unwrap(raw, uri, use_ema)
    return _strip_wrapper_prefixes(state)


def _suffix(uri: str) -> str:
    name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return os.path.splitext(name)[1].lower()


def _known_suffix(uri: str) -> str:
    suffix = _suffix(uri)
    if suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise CheckpointError(
            f"cannot read checkpoint {uri}: unsupported file type {suffix or '(none)'!r}; "
            f"expected one of {', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}"
        )
    return suffix


def check_checkpoint_file(uri: str | os.PathLike, *, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast when a checkpoint is missing, empty or in no format `load_state_dict` reads.

    Only the first bytes are read (one small range request on an object store), not the weights,
    so a job can check its checkpoint before it starts workers that load it. Raises
    FileNotFoundError or CheckpointError; the store's own errors pass through.
    """
    uri = os.fspath(uri)
    suffix = _known_suffix(uri)
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if fs.isdir(path):
        raise CheckpointError(f"cannot read checkpoint {uri}: it is a directory")
    head = fs.cat_file(path, start=0, end=16)
    if suffix == SAFETENSORS_SUFFIX:
        ok = len(head) > 8 and head[8:9] == b"{"  # u64 header length, then the JSON header
        kind = "a safetensors file"
    else:
        ok = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch's zip format, or a legacy pickle
        kind = "a torch checkpoint (zip archive or pickle)"
    if not ok:
        raise CheckpointError(f"cannot read checkpoint {uri}: {'it is empty' if not head else f'not {kind}'}")


def _read(uri: str, storage_options: dict[str, Any]) -> Any:
    suffix = _known_suffix(uri)
    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    try:
        if isinstance(fs, LocalFileSystem):
            return _read_local(path, suffix)
        with fs.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {uri}") from None
    except CheckpointError:
        raise
    except Exception as exc:  # torch/pickle/zip/safetensors all raise their own types
        raise CheckpointError(f"cannot read checkpoint {uri}: {type(exc).__name__}: {exc}") from exc
    try:
        if suffix == SAFETENSORS_SUFFIX:
            return safetensors.torch.load(data)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {uri}: {type(exc).__name__}: {exc}") from exc


def _read_local(path: str, suffix: str) -> Any:
    """Local files are memory-mapped where possible, so a 5 GB checkpoint is not copied twice."""
    if os.path.isdir(path):
        raise CheckpointError(f"cannot read checkpoint {path}: it is a directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    if suffix == SAFETENSORS_SUFFIX:
        return safetensors.torch.load_file(path, device="cpu")
    # Only the zip format (torch >= 1.6) can be memory-mapped; legacy files are read normally.
    mmap = zipfile.is_zipfile(path)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _unwrap(obj: Any, uri: str, use_ema: bool) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {uri} holds a {type(obj).__name__}, not a state dict (a mapping of "
            "parameter names to tensors)"
        )
    if use_ema:
        if not isinstance(obj.get("ema"), Mapping):
            raise CheckpointError(
                f"use_ema=True but checkpoint {uri} has no 'ema' weights "
                f"(top-level keys: {_preview([repr(k) for k in obj])}); load it with use_ema=False"
            )
        state = obj["ema"]
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    if not state:
        raise CheckpointError(f"checkpoint {uri} holds an empty state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            f"checkpoint {uri} is not a state dict: {len(bad)} of {len(state)} entries are not "
            f"name -> tensor (e.g. {_preview([f'{k!r}: {type(state[k]).__name__}' for k in bad], 5)})"
        )
    return dict(state)


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


# --- loading into a model --------------------------------------------------------------------


def load_checkpoint(
    model: nn.Module,
    uri: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
    use_ema: bool = False,
    strict: bool = True,
) -> nn.Module:
    """Load a checkpoint into `model` (on any device/dtype) and return the model.

    strict=True refuses any missing, unexpected or shape-mismatched entry with a readable
    `CheckpointError`; strict=False loads what fits and logs a warning about the rest.
    """
    uri = os.fspath(uri)
    state = load_state_dict(uri, storage_options=storage_options, use_ema=use_ema)
    target = model.state_dict()

    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        (k, tuple(state[k].shape), tuple(target[k].shape))
        for k in target
        if k in state and state[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        report = _mismatch_report(uri, model, target, state, missing, unexpected, mismatched)
        if strict:
            raise CheckpointError(report)
        logger.warning("loading with strict=False; skipped entries follow.\n%s", report)

    skip = {k for k, _, _ in mismatched}
    to_load: dict[str, torch.Tensor] = {}
    for name in list(state):
        if name in skip or name not in target:
            continue
        value = state.pop(name)  # drop our reference as we go to keep peak memory low
        want = target[name].dtype
        if value.is_floating_point() and want.is_floating_point and value.dtype != want:
            value = value.to(want)
        to_load[name] = value
    model.load_state_dict(to_load, strict=strict)
    return model


def _mismatch_report(
    uri: str,
    model: nn.Module,
    target: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    lines = [f"checkpoint {uri} does not match the model ({type(model).__name__}):"]
    if missing:
        lines.append(f"  {len(missing)} missing keys (in the model, not in the checkpoint):")
        lines += _listing(missing)
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys (in the checkpoint, not in the model):")
        lines += _listing(unexpected)
    if mismatched:
        lines.append(f"  {len(mismatched)} shape mismatches (checkpoint shape vs model shape):")
        lines += _listing([f"{k}: {list(a)} vs {list(b)}" for k, a, b in mismatched])
    for hint in _hints(set(target), set(state), target, state):
        lines.append(f"hint: {hint}")
    return "\n".join(lines)


def _listing(items: list[str]) -> list[str]:
    shown = [f"    {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        shown.append(f"    ... and {len(items) - MAX_LISTED} more")
    return shown


def _preview(items: list[str], limit: int = 10) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _has(keys: set[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _block_count(keys: set[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def _hints(
    model_keys: set[str],
    ckpt_keys: set[str],
    target: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
) -> list[str]:
    """Guess which configuration option explains a mismatch between ZipMap layouts."""
    hints: list[str] = []
    if not model_keys & ckpt_keys:
        hints.append("no key of the checkpoint matches the model: is this a ZipMap checkpoint?")
        return hints

    ckpt_mlp, model_mlp = _has(ckpt_keys, "camera_mlp_head."), _has(model_keys, "camera_mlp_head.")
    ckpt_trf, model_trf = _has(ckpt_keys, "camera_head."), _has(model_keys, "camera_head.")
    if ckpt_mlp and not model_mlp:
        hints.append(
            "the checkpoint has camera_mlp_head.* — is this the streaming preset "
            "(camera_head='mlp', e.g. 'streaming')?"
        )
    if ckpt_trf and not model_trf and model_mlp:
        hints.append(
            "the checkpoint has camera_head.* (transformer camera head) but the model has an MLP "
            "camera head — is this an offline preset ('offline_ref_view' / 'offline_affine')?"
        )

    ckpt_ttt = _has(ckpt_keys, "aggregator.global_blocks.0.ttt_block.")
    model_ttt = _has(model_keys, "aggregator.global_blocks.0.ttt_block.")
    if ckpt_ttt != model_ttt and _has(ckpt_keys, "aggregator.global_blocks.0."):
        if ckpt_ttt:
            hints.append("the checkpoint has TTT global blocks: build the model with global_block='ttt'")
        else:
            hints.append(
                "the checkpoint has attention global blocks (VGGT architecture): build the model "
                "with global_block='attention'"
            )

    token = "aggregator.camera_token"
    if token in target and token in state and target[token].shape[-1] != state[token].shape[-1]:
        ckpt_dim, model_dim = state[token].shape[-1], target[token].shape[-1]
        hints.append(
            f"the checkpoint's embed_dim is {ckpt_dim} but the model's is {model_dim}"
            + _presets_with_dim(ckpt_dim)
        )

    for prefix in ("aggregator.frame_blocks.", "camera_head.trunk."):
        n_ckpt, n_model = _block_count(ckpt_keys, prefix), _block_count(model_keys, prefix)
        if n_ckpt and n_model and n_ckpt != n_model:
            option = "depth" if prefix.startswith("aggregator") else "camera_trunk_depth"
            hints.append(
                f"the checkpoint has {n_ckpt} {prefix}* blocks but the model has {n_model} "
                f"(config {option})"
            )

    for head, option in (("depth_head.", "enable_depth"), ("local_point_head.", "enable_local_points")):
        in_ckpt, in_model = _has(ckpt_keys, head), _has(model_keys, head)
        if in_ckpt and not in_model:
            hints.append(f"the checkpoint has {head}*: build the model with {option}=True")
        elif in_model and not in_ckpt:
            hints.append(f"the checkpoint has no {head}*: build the model with {option}=False")

    dino_ckpt = _has(ckpt_keys, "aggregator.patch_embed.blocks.")
    dino_model = _has(model_keys, "aggregator.patch_embed.blocks.")
    if dino_ckpt != dino_model:
        kind = "a DINOv2" if dino_ckpt else "a conv"
        hints.append(f"the checkpoint uses {kind} patch embed; check the config's patch_embed")
    return hints


def _presets_with_dim(dim: int) -> str:
    from zipmap_core.config import PRESETS  # local import: config is only needed for hints

    names = sorted(name for name, cfg in PRESETS.items() if cfg.embed_dim == dim)
    return f" — presets with embed_dim {dim}: {', '.join(names)}" if names else ""


# --- saving ----------------------------------------------------------------------------------


def save_checkpoint(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    uri: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write `{"model": state_dict, **extra}` (.pt/.pth/.bin) or a .safetensors file.

    Tensors are moved to the CPU. Local files are written to a temporary file and renamed, so
    a crash never leaves a half-written checkpoint behind. For safetensors, `extra` must map
    strings to strings (it is stored as the file's metadata).
    """
    uri = os.fspath(uri)
    suffix = _suffix(uri)
    if suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ValueError(
            f"cannot save checkpoint {uri}: unsupported file type {suffix or '(none)'!r}; "
            f"use one of {', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}"
        )
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    else:
        state = dict(model_or_state_dict)
    state = {k: v.detach().cpu() for k, v in state.items()}
    extra = dict(extra or {})
    if "model" in extra:
        raise ValueError("extra must not contain 'model': that entry holds the state dict")

    if suffix == SAFETENSORS_SUFFIX:
        bad = {k: type(v).__name__ for k, v in extra.items() if not isinstance(v, str)}
        if bad:
            raise ValueError(
                f"safetensors metadata holds strings only; these extra entries are not: {bad}; "
                "save as .pt to keep arbitrary extras"
            )
        payload = safetensors.torch.save(_unshare(state), metadata=extra or None)

        def write(f: Any) -> None:
            f.write(payload)

    else:
        obj = {"model": state, **extra}

        def write(f: Any) -> None:
            torch.save(obj, f)

    write_file(uri, write, storage_options=storage_options)


def write_file(uri: str, write: Any, *, storage_options: dict[str, Any] | None = None) -> None:
    """Call `write(file)` on `uri` opened for binary writing; local files appear atomically."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if isinstance(fs, LocalFileSystem):
        _write_local_atomic(path, write)
    else:
        with fs.open(path, "wb") as f:
            write(f)


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights) or are not contiguous."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else 0
        if (ptr and ptr in seen) or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        elif ptr:
            seen.add(ptr)
        out[name] = tensor
    return out


def _write_local_atomic(path: str, write: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
