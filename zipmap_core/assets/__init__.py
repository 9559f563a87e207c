"""Model weights bundled with the package: the small demo ZipMaps (see README.md in this folder).

    model = load_checkpoint(ZipMap(ModelConfig.preset("demo_ttt")), "bundled:demo_ttt")

`bundled:<preset>` works wherever a checkpoint URI does (a job spec's `model.checkpoint`), on any
machine where the package is installed; `demo_checkpoint_path` gives the local file.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ASSETS_DIR",
    "BUNDLED_SCHEME",
    "DEMO_PRESETS",
    "bundled_checkpoints",
    "bundled_preset",
    "demo_checkpoint_path",
]

ASSETS_DIR = Path(__file__).resolve().parent
# The presets (zipmap_core.config) whose weights ship in this folder as <preset>.safetensors.
DEMO_PRESETS = ("demo_ttt", "demo_attention")
BUNDLED_SCHEME = "bundled:"  # checkpoint URIs `bundled:<preset>` name the weights shipped here
# A git-LFS pointer is a few lines of text; real weights are megabytes.
_LFS_POINTER_PREFIX = b"version https://git-lfs"

_HOW_TO_MAKE = (
    "the shipped files are trained with `python bench/train_demo.py --minutes 4.8 --attention-slack 1.0 --device cuda "
    "--out-dir zipmap_core/assets`; {readme} shows how to make CPU placeholders with `python -m zipmap_core.training`"
)


def bundled_checkpoints() -> list[str]:
    """Names of the weight files present in this folder, sorted."""
    return sorted(p.name for p in ASSETS_DIR.glob("*.safetensors"))


def bundled_preset(uri: str) -> str | None:
    """The preset a `bundled:<preset>` checkpoint URI names (None for any other URI).

    Raises ValueError when it names a preset that has no bundled weights."""
    if not uri.startswith(BUNDLED_SCHEME):
        return None
    preset = uri[len(BUNDLED_SCHEME) :]
    if preset not in DEMO_PRESETS:
        raise ValueError(f"{uri!r}: no bundled weights of that name; bundled: {', '.join(DEMO_PRESETS)}")
    return preset


def demo_checkpoint_path(preset: str = "demo_ttt") -> str:
    """The local path of the bundled weights of a demo preset (`zipmap_core/assets/<preset>.safetensors`).

    Raises ValueError for a preset that has no bundled weights, FileNotFoundError when the file
    is missing from this installation (or is only a git-LFS pointer).
    """
    if preset not in DEMO_PRESETS:
        raise ValueError(
            f"no bundled weights for preset {preset!r}; bundled presets: {', '.join(DEMO_PRESETS)} "
            f"(files in {ASSETS_DIR}: {', '.join(bundled_checkpoints()) or 'none'})"
        )
    path = ASSETS_DIR / f"{preset}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"the bundled weights of {preset!r} are missing: {path} does not exist "
            f"(files in {ASSETS_DIR}: {', '.join(bundled_checkpoints()) or 'none'}); "
            + _HOW_TO_MAKE.format(readme=ASSETS_DIR / "README.md")
        )
    with path.open("rb") as f:
        head = f.read(len(_LFS_POINTER_PREFIX))
    if head == _LFS_POINTER_PREFIX:
        raise FileNotFoundError(
            f"{path} is a git-LFS pointer, not the weights: run `git lfs pull` in the checkout "
            "(or install the package from a wheel)"
        )
    return str(path)
