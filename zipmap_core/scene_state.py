"""A sequence's scene memory: the fast weights every TTT layer holds after training on its frames.

ZipMap is stateful. Once the bidirectional update over all frames of a sequence is done, each of
the 24 global layers holds fast weights (w0, w1, w2) that encode the scene; the state-query model
renders novel views from them alone (`zipmap_core.engines.render`), without the input images.
A `SceneState` keeps those weights with what is needed to use them safely later: the identity of
the model that made them (a state only means something to the weights it was trained against),
the input size and the input frames' cameras (to place query cameras). It is saved as one
safetensors file, float32 or bfloat16, to any fsspec URL.

Size: 3 matrices per layer of head_dim x head_dim * inter_multi values per head, whatever the
number of frames; at full size 24 x 3 x 1024 x 2048 values = 576 MiB in float32, 288 MiB in bf16.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem

from zipmap_core.layers.ttt import TTTState

FORMAT = "zipmap-scene-state/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_WEIGHTS = ("w0", "w1", "w2")


class SceneStateError(ValueError):
    """A scene state cannot be read, or does not belong to the model it is used with."""


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a state belongs to: its architecture, and a fingerprint of its weights."""

    preset: str  # the config's name (informative)
    config_sha256: str  # of the config without its name: the architecture, hence the shapes
    weights_sha256: str  # of the learned special tokens and every TTT layer's output norm

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelIdentity:
        """The identity of a ZipMap model. The fingerprinted tensors are small, float32 on every
        precision path, and differ between any two trainings (or fine-tunings) of a model."""
        config = model.config.model_dump(mode="json", exclude={"name"})
        agg = model.aggregator
        parts = [agg.camera_token, agg.register_token]
        if model.config.enable_nvs:
            parts.append(agg.ray_cond_token)
        parts += [block.ttt_block.o_norm.weight for block in agg.global_blocks]
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).float() for p in parts]).cpu()
        return cls(
            preset=model.config.name,
            config_sha256=_sha256(json.dumps(config, sort_keys=True).encode()),
            weights_sha256=_sha256(flat.numpy().tobytes()),
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class SceneState:
    """The fast weights of one sequence, one TTTState per global layer (batch 1: w0 [h, d, dh],
    w1 [h, dh, d], w2 [h, d, dh]), what made them, and the input frames' geometry."""

    layers: list[TTTState]
    model: ModelIdentity
    image_hw: tuple[int, int]  # size of the input frames (what `intrinsics` refer to)
    num_frames: int
    extrinsics: torch.Tensor | None = None  # [S, 3, 4] input cameras, world-to-camera, world = first camera
    intrinsics: torch.Tensor | None = None  # [S, 3, 3] pixels of image_hw
    metadata: dict[str, str] = field(default_factory=dict)  # provenance (e.g. the job's model spec)

    @classmethod
    def capture(
        cls,
        model: torch.nn.Module,
        states: list[TTTState],
        image_hw: tuple[int, int],
        num_frames: int,
        extrinsics: torch.Tensor | None = None,
        intrinsics: torch.Tensor | None = None,
    ) -> SceneState:
        """The state an engine ends a (single-sequence) pass with."""
        if any(s is None for s in states):
            raise SceneStateError("only TTT models have a scene state (global_block='ttt')")
        if states[0].w0.shape[0] != model.aggregator.global_blocks[0].ttt_block.num_heads:
            raise SceneStateError(f"a scene state holds one sequence; got a batch of fast weights {states[0].w0.shape}")
        return cls(
            layers=list(states),
            model=ModelIdentity.of(model),
            image_hw=(int(image_hw[0]), int(image_hw[1])),
            num_frames=int(num_frames),
            extrinsics=None if extrinsics is None else extrinsics.detach().float(),
            intrinsics=None if intrinsics is None else intrinsics.detach().float(),
        )

    # -- description ----------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].w0.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].w0.device

    def shapes(self) -> dict[str, list[int]]:
        """Shapes of one layer's fast weights (every layer has the same)."""
        return {name: list(getattr(self.layers[0], name).shape) for name in _WEIGHTS}

    def nbytes(self, dtype: str | torch.dtype | None = None) -> int:
        """Bytes of the fast weights alone, as held or in `dtype` (cameras add 84 per frame)."""
        size = _dtype(dtype).itemsize if dtype is not None else self.dtype.itemsize
        return sum(getattr(layer, name).numel() for layer in self.layers for name in _WEIGHTS) * size

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> SceneState:
        """The state on `device`, fast weights in `dtype` (cameras stay float32); tensors already
        there are shared, not copied."""
        weights = None if dtype is None else _dtype(dtype)

        def moved(t: torch.Tensor | None, cast: torch.dtype | None = None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device or t.device, dtype=cast or t.dtype)

        layers = [TTTState(*(moved(getattr(layer, n), weights) for n in _WEIGHTS)) for layer in self.layers]
        return replace(self, layers=layers, extrinsics=moved(self.extrinsics), intrinsics=moved(self.intrinsics))

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a model other than the one that made this state: its fast weights would mean
        nothing to other weights, and rendering would silently produce noise."""
        ours = ModelIdentity.of(model)
        if ours.config_sha256 != self.model.config_sha256:
            raise SceneStateError(
                f"this scene state was made by a {self.model.preset!r} model; the model given is a "
                f"{ours.preset!r} of another architecture"
            )
        if ours.weights_sha256 != self.model.weights_sha256:
            raise SceneStateError(
                f"this scene state was made by a {self.model.preset!r} model with other weights "
                f"(fingerprint {self.model.weights_sha256[:12]}, the model given has {ours.weights_sha256[:12]}): "
                "load the checkpoint that made it"
            )

    # -- files ----------------------------------------------------------------------------------

    def save(
        self, uri: str | os.PathLike, *, dtype: str = "float32", storage_options: dict[str, Any] | None = None
    ) -> int:
        """Write one safetensors file (fast weights in `dtype`, float32 or bfloat16) to a path or
        fsspec URL, atomically on local disks. Returns the file's size in bytes."""
        from zipmap_core.checkpoint import save_checkpoint  # safetensors: loaded only for files

        uri = os.fspath(uri)
        tensors = {
            f"layers.{i:02d}.{name}": getattr(layer, name).detach().to("cpu", _dtype(dtype)).contiguous()
            for i, layer in enumerate(self.layers)
            for name in _WEIGHTS
        }
        if self.extrinsics is not None:
            tensors["cameras.extrinsics"] = self.extrinsics.detach().to("cpu", torch.float32).contiguous()
        if self.intrinsics is not None:
            tensors["cameras.intrinsics"] = self.intrinsics.detach().to("cpu", torch.float32).contiguous()
        header = {
            "format": FORMAT,
            "model_identity": json.dumps(self.model.__dict__, sort_keys=True),
            "image_hw": json.dumps(list(self.image_hw)),
            "num_frames": str(self.num_frames),
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }
        save_checkpoint(tensors, uri, storage_options=storage_options, extra=header)
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        return int(fs.size(path))

    @classmethod
    def load(
        cls,
        uri: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        storage_options: dict[str, Any] | None = None,
    ) -> SceneState:
        uri = os.fspath(uri)
        tensors, header = _read_safetensors(uri, storage_options or {})
        if header.get("format") != FORMAT:
            raise SceneStateError(f"{uri} is not a scene state (format {header.get('format')!r}, expected {FORMAT!r})")
        try:
            num_layers = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("layers."))
            layers = [
                TTTState(*(tensors[f"layers.{i:02d}.{n}"].to(device) for n in _WEIGHTS)) for i in range(num_layers)
            ]
            return cls(
                layers=layers,
                model=ModelIdentity(**json.loads(header["model_identity"])),
                image_hw=tuple(json.loads(header["image_hw"])),
                num_frames=int(header["num_frames"]),
                extrinsics=tensors.get("cameras.extrinsics"),
                intrinsics=tensors.get("cameras.intrinsics"),
                metadata=json.loads(header.get("metadata", "{}")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SceneStateError(f"scene state {uri} is incomplete or damaged: {type(exc).__name__}: {exc}") from None


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"scene states are stored as {' or '.join(DTYPES)}, not {dtype!r}") from None


def _read_safetensors(uri: str, storage_options: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on the CPU, the file's string metadata); local files are memory-mapped."""
    import safetensors.torch

    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    try:
        if isinstance(fs, LocalFileSystem):
            with safetensors.safe_open(path, "pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        data = fs.cat_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"scene state not found: {uri}") from None
    except Exception as exc:  # safetensors raises its own error types
        raise SceneStateError(f"cannot read scene state {uri}: {type(exc).__name__}: {exc}") from exc
    try:
        (length,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
        return safetensors.torch.load(data), metadata
    except Exception as exc:
        raise SceneStateError(f"cannot read scene state {uri}: {type(exc).__name__}: {exc}") from exc
