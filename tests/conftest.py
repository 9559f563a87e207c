"""Tests marked `gpu` exercise code paths that only run on CUDA. They belong to the GPU machine's
run (`pytest -m gpu`, results reported with the benchmarks), not to CPU CI: without CUDA they are
deselected, so a CPU run neither fails nor reports them as skipped checks."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]
    config.hook.pytest_deselected(items=gpu_items)
