"""Tests for zipmap_core.checkpoint: checkpoint forms, fsspec URLs, and readable mismatch errors."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import safetensors.torch
import torch
from torch import nn

from zipmap_core.checkpoint import CheckpointError, load_checkpoint, load_state_dict, save_checkpoint


def _net(hidden: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2), nn.BatchNorm1d(2))


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].cpu(), sb[k].cpu(), rtol=0, atol=0, check_dtype=False)


@pytest.fixture
def memory_root() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/zipmap-ckpt-{uuid.uuid4().hex}"
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --- checkpoint forms ------------------------------------------------------------------------


def test_bare_state_dict(tmp_path: Path) -> None:
    src = _net(seed=1)
    path = tmp_path / "bare.pt"
    torch.save(src.state_dict(), path)
    dst = load_checkpoint(_net(seed=2), path)
    _assert_same_weights(src, dst)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_model_wrapper_and_torch_suffixes(tmp_path: Path, suffix: str) -> None:
    src = _net(seed=1)
    path = tmp_path / f"wrapped{suffix}"
    torch.save({"model": src.state_dict(), "epoch": 3, "args": {"lr": 0.1}}, path)
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path))


def test_state_dict_wrapper(tmp_path: Path) -> None:
    src = _net(seed=1)
    path = tmp_path / "lightning.ckpt.pt"
    torch.save({"state_dict": src.state_dict(), "global_step": 10}, path)
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path))


def test_model_and_ema(tmp_path: Path) -> None:
    model_net, ema_net = _net(seed=1), _net(seed=3)
    path = tmp_path / "both.pt"
    torch.save({"model": model_net.state_dict(), "ema": ema_net.state_dict()}, path)
    _assert_same_weights(model_net, load_checkpoint(_net(seed=2), path))
    _assert_same_weights(model_net, load_checkpoint(_net(seed=2), path, use_ema=False))
    _assert_same_weights(ema_net, load_checkpoint(_net(seed=2), path, use_ema=True))


def test_ema_absent(tmp_path: Path) -> None:
    path = tmp_path / "no_ema.pt"
    torch.save({"model": _net().state_dict(), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="use_ema=True") as info:
        load_state_dict(path, use_ema=True)
    assert "'model'" in str(info.value) and "epoch" in str(info.value)
    bare = tmp_path / "bare.pt"
    torch.save(_net().state_dict(), bare)
    with pytest.raises(CheckpointError, match="no 'ema' weights"):
        load_checkpoint(_net(), bare, use_ema=True)


@pytest.mark.parametrize("prefix", ["module.", "module._orig_mod.", "_orig_mod."])
def test_wrapper_prefix_is_stripped(tmp_path: Path, prefix: str) -> None:
    src = _net(seed=1)
    path = tmp_path / "ddp.pt"
    torch.save({"model": {prefix + k: v for k, v in src.state_dict().items()}}, path)
    assert all(not k.startswith(("module.", "_orig_mod.")) for k in load_state_dict(path))
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path))


def test_prefix_kept_unless_on_every_key(tmp_path: Path) -> None:
    sd = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    path = tmp_path / "mixed.pt"
    torch.save(sd, path)
    assert set(load_state_dict(path)) == {"module.a", "b"}


def test_safetensors(tmp_path: Path) -> None:
    src = _net(seed=1)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(src.state_dict(), str(path))
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path))
    # prefixed safetensors files are normalised too
    safetensors.torch.save_file({"module." + k: v for k, v in src.state_dict().items()}, str(path))
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_memory_fsspec_url(memory_root: str, suffix: str) -> None:
    src = _net(seed=1)
    url = f"memory://{memory_root}/ckpt{suffix}"
    save_checkpoint(src, url)
    assert fsspec.filesystem("memory").exists(f"{memory_root}/ckpt{suffix}")
    _assert_same_weights(src, load_checkpoint(_net(seed=2), url))


def test_memory_url_written_by_hand(memory_root: str) -> None:
    src = _net(seed=1)
    url = f"memory://{memory_root}/hand.pt"
    with fsspec.open(url, "wb") as f:
        torch.save({"model": src.state_dict(), "ema": src.state_dict()}, f)
    _assert_same_weights(src, load_checkpoint(_net(seed=2), url, use_ema=True))


def test_dtype_cast_and_other_device(tmp_path: Path) -> None:
    src = _net(seed=1)
    path = tmp_path / "f32.pt"
    save_checkpoint(src, path)
    dst = _net(seed=2).to(torch.float64)
    load_checkpoint(dst, path)
    assert all(p.dtype == torch.float64 for p in dst.parameters())
    assert dst[3].num_batches_tracked.dtype == torch.long  # integer buffers are left alone
    _assert_same_weights(src, dst)
    half = tmp_path / "f16.pt"
    save_checkpoint(_net(seed=1).half(), half)
    dst32 = load_checkpoint(_net(seed=2), half)
    assert all(p.dtype == torch.float32 for p in dst32.parameters())
    _assert_same_weights(_net(seed=1).half(), dst32)


def test_bfloat16_model_on_any_device(tmp_path: Path) -> None:
    # The checkpoint is float32 on the CPU; the model is bfloat16 (on the GPU when there is one).
    src = _net(seed=1)
    path = tmp_path / "w.pt"
    save_checkpoint(src, path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dst = load_checkpoint(_net(seed=2).to(device=device, dtype=torch.bfloat16), path)
    assert next(dst.parameters()).dtype == torch.bfloat16


# --- saving ----------------------------------------------------------------------------------


def test_save_pt_layout_and_extra(tmp_path: Path) -> None:
    src = _net(seed=1)
    path = tmp_path / "sub" / "dir" / "out.pt"
    save_checkpoint(src, path, extra={"ema": src.state_dict(), "step": 7})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "ema", "step"} and raw["step"] == 7
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert not [p for p in path.parent.iterdir() if p.name != "out.pt"]  # no temp file left
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path, use_ema=True))


def test_save_state_dict_and_safetensors_metadata(tmp_path: Path) -> None:
    src = _net(seed=1)
    path = tmp_path / "out.safetensors"
    save_checkpoint(src.state_dict(), path, extra={"preset": "tiny"})
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"preset": "tiny"}
    _assert_same_weights(src, load_checkpoint(_net(seed=2), path))
    with pytest.raises(ValueError, match="strings only"):
        save_checkpoint(src, path, extra={"step": 7})
    with pytest.raises(ValueError, match="'model'"):
        save_checkpoint(src, tmp_path / "x.pt", extra={"model": 1})


def test_save_tied_and_non_contiguous_weights_to_safetensors(tmp_path: Path) -> None:
    a = torch.randn(4, 6)
    sd = {"a": a, "b": a, "c": a.t()}
    path = tmp_path / "tied.safetensors"
    save_checkpoint(sd, path)
    out = load_state_dict(path)
    for k in sd:
        torch.testing.assert_close(out[k], sd[k])


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    save_checkpoint(_net(seed=1), path)
    save_checkpoint(_net(seed=5), path)
    _assert_same_weights(_net(seed=5), load_checkpoint(_net(seed=2), path))
    assert os.listdir(tmp_path) == ["w.pt"]


def test_save_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported file type"):
        save_checkpoint(_net(), tmp_path / "w.ckpt")


# --- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path, memory_root: str) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        load_state_dict(f"memory://{memory_root}/gone.safetensors")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_file(tmp_path: Path, memory_root: str, suffix: str) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(b"definitely not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    url = f"memory://{memory_root}/corrupt{suffix}"
    fsspec.filesystem("memory").pipe(url.removeprefix("memory://"), b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_state_dict(url)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    save_checkpoint(_net(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_state_dict(path)


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled_module.pt"
    torch.save(_net(), path)  # a whole nn.Module: needs arbitrary unpickling
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_state_dict(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([torch.zeros(1)], "holds a list, not a state dict"),
        (torch.zeros(3), "holds a Tensor, not a state dict"),
        ({}, "empty state dict"),
        ({"model": {}}, "empty state dict"),
        ({"a": torch.zeros(1), "step": 3}, "not a state dict: 1 of 2 entries"),
        ({"model": {"w": "string"}}, "'w': str"),
    ],
)
def test_non_state_dict_content(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        load_state_dict(path)


def test_unsupported_suffix_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="unsupported file type '.ckpt'"):
        load_state_dict(tmp_path / "w.ckpt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="directory"):
        load_state_dict(tmp_path / "dir.pt")


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    sd = _net().state_dict()
    sd.pop("0.weight")
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_net(), path)
    msg = str(info.value)
    assert str(path) in msg
    assert "1 missing keys" in msg and "0.weight" in msg
    assert "1 unexpected keys" in msg and "extra.weight" in msg
    assert "shape mismatches" not in msg


def test_shape_mismatch_message(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    save_checkpoint(_net(hidden=16), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_net(hidden=8), path)
    msg = str(info.value)
    assert "3 shape mismatches (checkpoint shape vs model shape)" in msg
    assert "0.weight: [16, 4] vs [8, 4]" in msg
    assert "0.bias: [16] vs [8]" in msg
    assert "2.weight: [2, 16] vs [2, 8]" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg


def test_long_lists_are_truncated(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({f"stray.{i}": torch.zeros(1) for i in range(50)} | _net().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_net(), path)
    msg = str(info.value)
    assert "50 unexpected keys" in msg
    assert "stray.19" in msg and "stray.20" not in msg
    assert "... and 30 more" in msg


def test_strict_false_loads_what_fits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _net(hidden=16, seed=1)
    sd = src.state_dict()
    sd["3.weight"] = torch.full((2,), 0.5)  # matches the target model's BatchNorm
    sd["extra"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    dst = _net(hidden=8, seed=2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="zipmap_core.checkpoint"):
        load_checkpoint(dst, path, strict=False)
    after = dst.state_dict()
    torch.testing.assert_close(after["0.weight"], before["0.weight"])  # shape mismatch: skipped
    torch.testing.assert_close(after["3.weight"], torch.full((2,), 0.5))  # loaded
    torch.testing.assert_close(after["2.bias"], sd["2.bias"])  # loaded
    assert "strict=False" in caplog.text
    assert "0.weight: [16, 4] vs [8, 4]" in caplog.text and "extra" in caplog.text


def test_strict_false_quiet_when_everything_fits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w.pt"
    save_checkpoint(_net(seed=1), path)
    with caplog.at_level(logging.WARNING, logger="zipmap_core.checkpoint"):
        load_checkpoint(_net(seed=2), path, strict=False)
    assert caplog.text == ""


def test_unrelated_checkpoint_hint(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"encoder.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="is this a ZipMap checkpoint"):
        load_checkpoint(_net(), path)


def test_preset_hints_from_key_names(tmp_path: Path) -> None:
    # Fake layouts named like ZipMap's, to exercise the hints without a full model.
    class Fake(nn.Module):
        def __init__(self, names: dict[str, tuple[int, ...]]) -> None:
            super().__init__()
            for name, shape in names.items():
                self.register_buffer(name.replace(".", "__"), torch.zeros(shape))

        def state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return {k.replace("__", "."): v for k, v in super().state_dict(*args, **kwargs).items()}

    offline = {
        "aggregator.camera_token": (1, 2, 1, 32),
        "aggregator.frame_blocks.0.w": (32,),
        "aggregator.frame_blocks.1.w": (32,),
        "aggregator.global_blocks.0.ttt_block.w0": (1, 32, 64),
        "camera_head.trunk.0.w": (32,),
        "depth_head.norm.weight": (32,),
    }
    streaming = {k: v for k, v in offline.items() if not k.startswith("camera_head.")}
    streaming["camera_mlp_head.mlp.0.weight"] = (32,)
    path = tmp_path / "stream.pt"
    torch.save({k: torch.zeros(v) for k, v in streaming.items()}, path)
    with pytest.raises(CheckpointError, match=r"camera_mlp_head\.\* — is this the streaming preset"):
        load_checkpoint(Fake(offline), path)

    path = tmp_path / "offline.pt"
    torch.save({k: torch.zeros(v) for k, v in offline.items()}, path)
    with pytest.raises(CheckpointError, match="is this an offline preset"):
        load_checkpoint(Fake(streaming), path)

    bigger = {k.replace("frame_blocks.1", "frame_blocks.2"): v for k, v in offline.items()}
    bigger = {k: (*v[:-1], 384) if k == "aggregator.camera_token" else v for k, v in bigger.items()}
    bigger.pop("depth_head.norm.weight")
    bigger.pop("aggregator.global_blocks.0.ttt_block.w0")
    attention = {"aggregator.global_blocks.0.attn.qkv.weight": (96, 32)}
    path = tmp_path / "big.pt"
    torch.save({k: torch.zeros(v) for k, v in (bigger | attention).items()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(Fake(offline), path)
    msg = str(info.value)
    assert "embed_dim is 384 but the model's is 32" in msg and "reference_dev" in msg
    assert "3 aggregator.frame_blocks.* blocks but the model has 2 (config depth)" in msg
    assert "no depth_head.*: build the model with enable_depth=False" in msg
    assert "global_block='attention'" in msg


# --- the real model --------------------------------------------------------------------------


def test_zipmap_tiny_round_trip(tmp_path: Path, memory_root: str) -> None:
    from zipmap_core.config import ModelConfig
    from zipmap_core.models import zipmap

    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    src = zipmap.ZipMap(cfg)
    torch.manual_seed(1)
    fresh = zipmap.ZipMap(cfg).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in src.state_dict().items())  # test is meaningful
    for path in (tmp_path / "tiny.pt", tmp_path / "tiny.safetensors", f"memory://{memory_root}/t.pt"):
        is_pt = str(path).endswith(".pt")
        save_checkpoint(src, path, extra={"ema": src.state_dict()} if is_pt else None)
        _assert_same_weights(src, load_checkpoint(zipmap.ZipMap(cfg), path))
        _assert_same_weights(src, load_checkpoint(zipmap.ZipMap(cfg), path, use_ema=is_pt))

    # DDP-style prefix inside a {"model", "ema"} wrapper, as released checkpoints may be
    ddp = {"module." + k: v for k, v in src.state_dict().items()}
    torch.save({"model": ddp, "ema": ddp}, tmp_path / "ddp.pt")
    _assert_same_weights(src, load_checkpoint(zipmap.ZipMap(cfg), tmp_path / "ddp.pt", use_ema=True))


def test_zipmap_tiny_wrong_preset_hint(tmp_path: Path) -> None:
    from zipmap_core.config import ModelConfig
    from zipmap_core.models import zipmap

    cfg = ModelConfig.preset("tiny")
    streaming_cfg = cfg.model_copy(update={"camera_head": "mlp", "streaming_window": 2})
    path = tmp_path / "stream.pt"
    save_checkpoint(zipmap.ZipMap(streaming_cfg), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(zipmap.ZipMap(cfg), path)
    msg = str(info.value)
    assert "missing keys" in msg and "camera_head." in msg
    assert "unexpected keys" in msg and "camera_mlp_head." in msg
    assert "is this the streaming preset" in msg

    save_checkpoint(zipmap.ZipMap(cfg), path)
    with pytest.raises(CheckpointError, match="is this an offline preset"):
        load_checkpoint(zipmap.ZipMap(streaming_cfg), path)
