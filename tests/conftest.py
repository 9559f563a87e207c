"""Tests marked `gpu` exercise code paths that only run on CUDA (`pytest -m gpu` on a GPU
machine); without CUDA they are skipped, the one kind of skip this suite has."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU machine")
    for item in gpu_items:
        item.add_marker(skip)
