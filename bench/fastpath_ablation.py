"""Which part of the fast path moves the trained demo model away from float32, per device.

    python bench/fastpath_ablation.py --device cuda

The fast path differs from plain bf16 autocast in three places: weight matrices stored in bf16
(autocast casts them per op: the same rounding), the trunk MLPs' GELU computed in the GEMM
epilogue on CUDA (tanh form), and the dense heads in bf16 (autocast leaves them in float32). Each
variant switches one of them back and reports the errors of tests/zipmap_core/test_fast_path.py
against float32 on the same device, next to plain autocast.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.zipmap_core.test_fast_path import demo_scene, errors, trained_demo  # noqa: E402
from zipmap_core import EngineConfig, reconstruct  # noqa: E402
from zipmap_core.engines.precision import cast_for_inference  # noqa: E402
from zipmap_core.layers.mlp import Mlp  # noqa: E402


def fast_variant(trained, gelu_in_gemm: bool, float32_heads: bool):
    model = copy.deepcopy(trained)
    cast_for_inference(model, "bfloat16")
    if not gelu_in_gemm:
        for module in model.modules():
            if isinstance(module, Mlp):
                module.gelu_in_gemm = False
    if float32_heads:
        for name, head in model.dense_heads(nvs=True).items():
            for p, p32 in zip(head.parameters(), trained.dense_heads(nvs=True)[name].parameters()):
                p.data = p32.data.clone()
    return model


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    trained, scene = trained_demo().to(device), demo_scene()
    results = {}
    for mode in ("offline", "chunked", "streaming"):
        common = {"mode": mode, "chunk_size": 4, "window": 3, "local_points": True}
        ref = list(reconstruct(trained, scene, EngineConfig(dtype="float32", **common), device=device))
        rows = {"autocast": errors(list(reconstruct(
            trained, scene, EngineConfig(dtype="bfloat16", fast=False, **common), device=device)), ref)}
        fast = EngineConfig(dtype="bfloat16", fast=True, compile=False, **common)
        for name, gelu, heads32 in [
            ("fast", True, False),
            ("fast, exact GELU", False, False),
            ("fast, float32 heads", True, True),
            ("fast, exact GELU, float32 heads", False, True),
        ]:
            model = fast_variant(trained, gelu, heads32)
            rows[name] = errors(list(reconstruct(model, scene, fast, device=device)), ref)
        results[mode] = rows
        keys = ("depth_median", "depth", "translation", "rotation_deg", "intrinsic")
        print(f"\n{mode} ({args.device}): error against float32")
        print(f"{'variant':34s}" + "".join(f"{k:>14s}" for k in keys))
        for name, row in rows.items():
            print(f"{name:34s}" + "".join(f"{row[k]:14.3e}" for k in keys))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
