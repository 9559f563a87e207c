"""The bundled weights: found by preset name, with errors that say what exists and what to do."""

import os

import pytest

from zipmap_core import assets
from zipmap_core.assets import DEMO_PRESETS, demo_checkpoint_path


def test_unknown_preset_lists_the_bundled_ones():
    with pytest.raises(ValueError) as info:
        demo_checkpoint_path("offline_affine")
    message = str(info.value)
    assert "'offline_affine'" in message and "demo_ttt" in message and "demo_attention" in message


def test_missing_file_names_the_path_and_what_is_there(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS_DIR", tmp_path)
    (tmp_path / "demo_attention.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(FileNotFoundError) as info:
        demo_checkpoint_path("demo_ttt")
    message = str(info.value)
    assert str(tmp_path / "demo_ttt.safetensors") in message
    assert "demo_attention.safetensors" in message  # what exists
    assert "bench/train_demo.py" in message and "README.md" in message  # how to make one
    assert demo_checkpoint_path("demo_attention") == str(tmp_path / "demo_attention.safetensors")


def test_git_lfs_pointer_is_not_taken_for_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS_DIR", tmp_path)
    (tmp_path / "demo_ttt.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 9167414\n"
    )
    with pytest.raises(FileNotFoundError, match="git-LFS pointer"):
        demo_checkpoint_path("demo_ttt")


def test_bundled_files_fit_their_presets_and_stay_small():
    """Whatever weights are in zipmap_core/assets (GPU-trained or a CPU placeholder) load strictly."""
    import safetensors
    import torch

    from zipmap_core import ModelConfig, ZipMap, load_checkpoint

    present = [p for p in DEMO_PRESETS if os.path.isfile(assets.ASSETS_DIR / f"{p}.safetensors")]
    if not present:
        pytest.skip("no bundled weights in zipmap_core/assets")
    for preset in present:
        path = demo_checkpoint_path(preset)
        assert os.path.getsize(path) < 10e6
        with safetensors.safe_open(path, "pt") as f:
            assert f.metadata()["preset"] == preset
            assert f.get_tensor("aggregator.camera_token").dtype == torch.float16
            # trained as the preset now runs it: weightless settings (patch positions) included
            assert ModelConfig.model_validate_json(f.metadata()["model_config"]) == ModelConfig.preset(preset)
        load_checkpoint(ZipMap(ModelConfig.preset(preset)), path)  # strict


@pytest.mark.parametrize("preset", DEMO_PRESETS)
def test_bundled_uri_loads_the_shipped_weights(preset):
    """`bundled:<preset>` is a checkpoint URI like any other: the same weights as the file."""
    import torch

    from zipmap_core import load_state_dict

    if not os.path.isfile(assets.ASSETS_DIR / f"{preset}.safetensors"):
        pytest.skip("no bundled weights in zipmap_core/assets")
    by_uri = load_state_dict(f"bundled:{preset}")
    by_path = load_state_dict(demo_checkpoint_path(preset))
    assert by_uri.keys() == by_path.keys()
    assert all(torch.equal(by_uri[k], by_path[k]) for k in by_path)


def test_bundled_uri_of_unknown_weights_lists_the_bundled_ones():
    from zipmap_core import load_state_dict

    with pytest.raises(ValueError, match="bundled: demo_ttt, demo_attention"):
        load_state_dict("bundled:offline_affine")


def test_the_wheel_ships_the_weights_and_readme_but_not_the_training_curve(tmp_path):
    """zipmap_core/assets holds the training curve for readers of the repository; the wheel carries
    only what loading needs (pyproject's package-data)."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    shutil.copytree(root / "zipmap_core", source / "zipmap_core", ignore=shutil.ignore_patterns("__pycache__"))
    (source / "zipmap_core" / "assets" / "training_curve.png").write_bytes(b"\x89PNG")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w",
         str(tmp_path / "dist")],
        check=True, cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = {n.rsplit("/", 1)[-1] for n in zipfile.ZipFile(wheel).namelist() if n.startswith("zipmap_core/assets/")}
    assert shipped == {"__init__.py", "README.md", *(f"{p}.safetensors" for p in DEMO_PRESETS)}
