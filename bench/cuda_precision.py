"""Reduced precision on CUDA against float32 on CUDA, on the reference model of ../shared/reference.

    python bench/cuda_precision.py

Prints the max relative error of depth, confidence, local points and pose encoding for bf16 and
fp16 autocast (offline and chunked engines), and checks that the chunked engine's CUDA path
(pinned memory, side-stream copies) is exact in float32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.zipmap_core.reference_data import filled_state_dict, load_arrays  # noqa: E402
from zipmap_core import EngineConfig, ModelConfig, ZipMap, reconstruct  # noqa: E402

FIELDS = ("extrinsic", "intrinsic", "depth", "depth_conf", "local_points")  # pose via the cameras


def stack(frames, field):
    return np.stack([getattr(f, field) for f in frames])


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def main() -> None:
    model = ZipMap(ModelConfig.preset("reference_dev")).eval()
    model.load_state_dict(filled_state_dict(model))
    model = model.cuda()
    ref = load_arrays()
    images = torch.from_numpy(ref["images"])[0]
    fp32 = list(reconstruct(model, images, EngineConfig(local_points=True), device="cuda"))
    print("float32 CUDA vs the published float32 CPU outputs:",
          f"depth {rel(stack(fp32, 'depth'), ref['offline/depth'][0, ..., 0]):.2e}",
          f"conf {rel(stack(fp32, 'depth_conf'), ref['offline/depth_conf'][0]):.2e}")
    for mode in ("offline", "chunked"):
        for dtype in ("float32", "bfloat16", "float16"):
            engine = EngineConfig(mode=mode, dtype=dtype, chunk_size=2, local_points=True, gpu_cache_gb=0)
            frames = list(reconstruct(model, images, engine, device="cuda"))
            errs = {f: rel(stack(frames, f), stack(fp32, f)) for f in FIELDS}
            finite = all(np.isfinite(stack(frames, f)).all() for f in FIELDS)
            print(f"{mode:8s} {dtype:9s} finite={finite} " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))


if __name__ == "__main__":
    main()
