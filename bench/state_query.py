"""Scene memory on the GPU: the size of a sequence's state, the time to render a view from it, and
rendering from a stored state against recomputing the sequence.

    python bench/state_query.py            # full-size state_query, random weights, 392x518: ~1-2 min on an H200
    python bench/state_query.py --preset tiny_state_query --device cpu --height 56 --width 84 \\
        --frames 3 --views 3 --batch-sizes 1 3 --repeats 1        # CPU smoke check

One process, one model (random weights, built on the device). For every N in --frames:
1. state: the fast weights of an N-frame sequence (`SceneState`), bytes held and safetensors file
   sizes in float32 and bfloat16 (written to a temporary folder), save and load times;
2. render: --views query views (an orbit around the first camera) from that state (already on the
   device), `batch_size` views per pass for each of --batch-sizes (1 = unbatched), under --dtype
   autocast; seconds per view, median of --repeats after one warm-up, results copied to the host;
3. from state vs recompute: (a) load the float32 state file (from the page cache: written just
   before) and render the views, against (b) the least a model without stored states must do to
   answer the same views: the trunk over the N frames with the K query views appended (the
   released training path) and the novel-view head. Ratio = (b) / (a). The largest difference of
   their colours is printed as a check (they compute the same function).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from zipmap_core import ModelConfig, ZipMap
from zipmap_core.engines.precision import autocast
from zipmap_core.engines.render import render_views
from zipmap_core.query_cameras import orbit
from zipmap_core.rays import rays_from_extrinsics
from zipmap_core.scene_state import SceneState

MIB = 2**20
try:
    import safetensors  # noqa: F401  (state files; without it the bench times host-memory states)

    HAVE_SAFETENSORS = True
except ImportError:
    HAVE_SAFETENSORS = False


def log(msg: str) -> None:
    print(msg, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """(median seconds over `repeats` runs after one warm-up, the last result)."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def query_cameras(height: int, width: int, views: int):
    """An orbit of `views` cameras around the first input camera (identity), looking 1 unit ahead."""
    K = torch.tensor([[float(width), 0.0, width / 2], [0.0, float(width), height / 2], [0.0, 0.0, 1.0]])
    return orbit(torch.eye(3, 4)[None], K[None], (height, width), views, target_depth=1.0, radius=0.1)


def recompute(model: ZipMap, images: torch.Tensor, rays: torch.Tensor, dtype: str) -> torch.Tensor:
    """Views without a stored state: the sequence and the query views in one pass, then the
    novel-view head; the colours reach the host."""
    with torch.inference_mode(), autocast(images.device, dtype):
        layers, _ = model.aggregator(images[None], query_rays=rays[None])
        N = images.shape[0]
        out = model.predict_views({i: layers[i][:, N:] for i in model.config.dpt.layers}, tuple(images.shape[-2:]))
    return out["nvs_pred"][0, ..., :3].float().cpu()


def measure_sequence(model: ZipMap, N: int, cameras, rays: torch.Tensor, folder: str, args) -> dict:
    """Sections 1-3 of the module docstring for one N-frame sequence of random images."""
    device, (H, W), K = rays.device, cameras.image_hw, len(cameras)
    images = torch.rand(N, 3, H, W, device=device)
    row: dict = {"frames": N}
    row["recompute_s"], colours = timed(lambda: recompute(model, images, rays, args.dtype), device, args.repeats)
    with torch.inference_mode(), autocast(device, args.dtype):
        _, states = model.aggregator(images[None])
    state = SceneState.capture(model, states, (H, W), N).to("cpu")
    row["state_mib"] = {"float32": state.nbytes("float32") / MIB, "bfloat16": state.nbytes("bfloat16") / MIB}
    paths = {d: os.path.join(folder, f"{N}_{d}.safetensors") for d in ("float32", "bfloat16")}
    if HAVE_SAFETENSORS:
        for d, path in paths.items():
            begin = time.perf_counter()
            row[f"file_mib_{d}"] = state.save(path, dtype=d) / MIB
            row[f"save_s_{d}"] = time.perf_counter() - begin

    def load() -> SceneState:
        """The float32 file to the device (without safetensors: the host copy to the device)."""
        return SceneState.load(paths["float32"], device=device) if HAVE_SAFETENSORS else state.to(device)

    def render(source: SceneState, batch: int) -> list:
        return list(render_views(model, source, cameras, batch_size=batch, dtype=args.dtype))

    row["load_s"], _ = timed(load, device, args.repeats)

    resident = state.to(device)  # render time alone, the state already on the device
    row["render_s_per_view"] = {
        b: timed(lambda b=b: render(resident, b), device, args.repeats)[0] / K for b in args.batch_sizes
    }
    best = min(args.batch_sizes, key=lambda b: row["render_s_per_view"][b])
    row["from_state_s"], views = timed(lambda: render(load(), best), device, args.repeats)
    row["recompute_over_from_state"] = row["recompute_s"] / row["from_state_s"]
    stored = torch.stack([torch.from_numpy(v.rgb) for v in views])
    row["max_rgb_difference"] = float((stored - colours).abs().max())
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="state_query")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 100], help="input frames of the sequence")
    ap.add_argument("--views", type=int, default=16, help="query views rendered")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16], help="views per pass (1: unbatched)")
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    H, W, K = args.height, args.width, args.views
    cameras = query_cameras(H, W, K)
    rays = rays_from_extrinsics(cameras.extrinsics, cameras.intrinsics, (H, W)).to(device)
    results: dict = {
        "args": vars(args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_build_s": round(time.perf_counter() - start, 2),
        "sequences": [],
    }
    log(
        f"{args.preset} ({results['parameters'] / 1e9:.2f} B parameters) on {results['device']}, {H}x{W}, "
        f"{K} query views, {args.dtype} autocast"
    )

    with tempfile.TemporaryDirectory(prefix="state-query-bench-") as folder:
        for N in args.frames:
            row = measure_sequence(model, N, cameras, rays, folder, args)
            results["sequences"].append(row)
            log(
                f"N={N}: state {row['state_mib']['float32']:.1f} MiB float32 / {row['state_mib']['bfloat16']:.1f} "
                f"MiB bf16, load {row['load_s']:.3f} s; from state {row['from_state_s']:.3f} s, recompute "
                f"{row['recompute_s']:.3f} s"
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if device.type == "cuda":
        results["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def report(results: dict) -> None:
    args = results["args"]
    sizes = args["batch_sizes"]
    log("")
    log(
        "| N frames | state float32 | state bf16 | "
        + " | ".join(f"render / view, batch {b}" for b in sizes)
        + f" | load + render {args['views']} views | recompute | recompute / from state | max rgb diff |"
    )
    log("|---" * (7 + len(sizes)) + "|")
    for row in results["sequences"]:
        per_view = " | ".join(f"{row['render_s_per_view'][b] * 1e3:.1f} ms" for b in sizes)
        files = " | ".join(
            f"{row['file_mib_' + d]:.1f} MiB" if HAVE_SAFETENSORS else f"{row['state_mib'][d]:.1f} MiB (held)"
            for d in ("float32", "bfloat16")
        )
        log(
            f"| {row['frames']} | {files} | {per_view} | "
            f"{row['from_state_s']:.3f} s | {row['recompute_s']:.3f} s | {row['recompute_over_from_state']:.2f}x | "
            f"{row['max_rgb_difference']:.2g} |"
        )
    if not HAVE_SAFETENSORS:
        log("safetensors is not installed: states were timed from host memory, not from files")
    if "peak_gib" in results:
        log(f"peak GPU memory {results['peak_gib']:.1f} GiB; model built in {results['model_build_s']} s")


if __name__ == "__main__":
    main()
