"""`engine: auto` (the default spec) against the best manual setting, on the same sequences.

    python bench/engine_auto.py          # one H200: 50 250 750 2000 frames at 392x518, about 6 minutes

One model (random full-size `offline_affine` weights), images on the host as the pipeline hands
them to the engine, every frame's results copied to the host. Three parts:

1. the compile rule: the eager fast path against the compiled one at --payback-frames frames,
   and the compilation (warm-up of both modes on two lengths, after which the frame count is
   dynamic, so every later variant shares the compiled graphs): the run length at which compiling
   pays back, against zipmap_core.engines.auto.COMPILE_PAYBACK_FRAMES;
2. per length N, the manual candidates (compiled fast path offline and chunked; offline is tried
   even where the memory model predicts it does not fit, and reported as out of memory if so),
   each after one unmeasured run of the new length (a recompile past 2**31 elements, pinning);
3. per length N, the default `EngineConfig()` resolved for a long run (`--run-frames`, a dataset of
   many sequences: compiled) and measured; the table shows time and peak GPU memory of each and
   default / best manual (target <= 1.10).

A CPU smoke run: --device cpu --preset tiny --frames 3 9 --height 56 --width 84 --no-compile
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/timing.py, also when loaded by a test
from timing import measure, run  # noqa: E402

from zipmap_core import EngineConfig, ModelConfig, ZipMap  # noqa: E402
from zipmap_core.engines.auto import COMPILE_PAYBACK_FRAMES, Accelerator, offline_peak_bytes, resolve_engine  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="offline_affine")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, nargs="*", default=[50, 250, 750, 2000])
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--chunk-size", type=int, default=EngineConfig().chunk_size)
    ap.add_argument("--repeats", type=int, default=2, help="measured runs per variant (1 above 1000 frames)")
    ap.add_argument("--payback-frames", type=int, default=250, help="length of the eager vs compiled comparison")
    ap.add_argument("--run-frames", type=int, default=100 * COMPILE_PAYBACK_FRAMES,
                    help="frames of the run the default is resolved for (a dataset of many sequences)")
    ap.add_argument("--no-compile", action="store_true", help="manual candidates eager (CPU smoke runs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        model = ZipMap(ModelConfig.preset(args.preset)).eval()
    hw = (args.height, args.width)
    compile_ = not args.no_compile
    low = {"dtype": "bfloat16", "fast": True} if cuda else {"dtype": "float32", "fast": False}
    manual = {
        "offline": EngineConfig(mode="offline", compile=compile_ and cuda, **low),
        "chunked": EngineConfig(mode="chunked", chunk_size=args.chunk_size, compile=compile_ and cuda, **low),
    }
    eager = manual["offline"].model_copy(update={"compile": False})
    results: dict = {"args": vars(args), "device": torch.cuda.get_device_name() if cuda else "cpu", "rows": []}

    # 1. what compiling costs and saves (eager first: compiling changes the model for good)
    n = args.payback_frames
    images = torch.rand(n, 3, *hw)
    run(model, images[:4], eager, device=args.device)
    eager_s = measure(model, images, eager, args.repeats, device=args.device)["time_s"]
    warm_start = time.perf_counter()
    for k in (4, 2 * args.chunk_size + 3):  # two lengths each: the frame count then becomes dynamic
        for engine in manual.values():
            run(model, torch.rand(k, 3, *hw), engine, device=args.device)
    compile_s = time.perf_counter() - warm_start
    compiled_s = measure(model, images, manual["offline"], args.repeats, device=args.device)["time_s"]
    saved = (eager_s - compiled_s) / n
    results["compile"] = {
        "frames": n, "eager_s": eager_s, "compiled_s": compiled_s, "warmup_s": compile_s,
        "saved_ms_per_frame": 1e3 * saved, "break_even_frames": compile_s / saved if saved > 0 else None,
    }
    log(f"compile rule: {json.dumps(results['compile'])}")
    del images

    # 2 and 3. manual candidates, then the default, per length
    for n in args.frames:
        images = torch.rand(n, 3, *hw)
        repeats = args.repeats if n <= 1000 else 1
        row: dict = {"frames": n}
        for name, engine in manual.items():
            row[name] = _measure_new_length(model, images, engine, repeats, args.device)
            log(f"N={n} {name}: {row[name]}")
        acc = Accelerator.of(device)
        default = resolve_engine(EngineConfig(), model, n, hw, acc, run_frames=args.run_frames)
        row["default_engine"] = default.settings()
        row["predicted_offline_gib"] = offline_peak_bytes(model, default, n, hw) / 2**30
        row["default"] = measure(model, images, default, repeats, device=args.device)
        log(f"N={n} default {row['default_engine']}: {row['default']}")
        done = [row[k]["time_s"] for k in manual if row[k]["time_s"] is not None]
        row["best_manual_s"] = min(done) if done else None
        row["ratio"] = row["default"]["time_s"] / row["best_manual_s"] if done and row["default"]["time_s"] else None
        results["rows"].append(row)
        del images
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        if args.json:  # after every row: a run cut short still leaves what it measured
            Path(args.json).write_text(json.dumps(results, indent=1))

    _report(results, time.perf_counter() - start)
    return results


def _measure_new_length(model, images, engine, repeats: int, device: str) -> dict:
    """One unmeasured run (a new length may recompile or pin memory), then `repeats` measured; a
    failure (out of memory, a compiler error at this size) is reported instead of ending the run."""
    try:
        first = measure(model, images, engine, 1, device=device)
        return first if first["time_s"] is None else measure(model, images, engine, repeats, device=device)
    except Exception as exc:  # noqa: BLE001 - the other variants are still worth measuring
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        return {"time_s": None, "peak_gib": None, "error": f"{type(exc).__name__}: {exc}"[:200]}


def _cell(r: dict) -> str:
    if r["time_s"] is None:
        return r.get("error", "-")
    peak = "" if r["peak_gib"] is None else f" ({r['peak_gib']:.1f} GiB)"
    return f"{r['time_s']:.2f} s{peak}"


def _report(results: dict, elapsed: float) -> None:
    a, c = results["args"], results["compile"]
    log(f"\n{results['device']}, {a['preset']}, {a['height']}x{a['width']}, chunk {a['chunk_size']}, "
        f"median of {a['repeats']} (1 above 1000 frames), images on the host, {elapsed:.0f} s in all\n")
    log("| N | default (auto) | resolved to | offline | chunked | best manual | default / best |")
    log("|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        e = r["default_engine"]
        resolved = f"{e['mode']} {e['dtype']}{' fast' if e['fast'] else ''}{' compiled' if e['compile'] else ''}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        best = "-" if r["best_manual_s"] is None else f"{r['best_manual_s']:.2f} s"
        log(f"| {r['frames']} | {_cell(r['default'])} | {resolved} | {_cell(r['offline'])} | {_cell(r['chunked'])} "
            f"| {best} | {ratio} |")
    worst = max((r["ratio"] for r in results["rows"] if r["ratio"] is not None), default=None)
    if worst is not None:
        log(f"\nworst default / best manual: {worst:.3f} ({'within' if worst <= 1.10 else 'OVER'} the 1.10 target)")
    log(f"compile rule at {c['frames']} frames: eager {c['eager_s']:.2f} s, compiled {c['compiled_s']:.2f} s "
        f"({c['saved_ms_per_frame']:.2f} ms a frame saved); warm-up with compilation {c['warmup_s']:.0f} s; "
        f"break-even after {c['break_even_frames'] or float('nan'):.0f} frames "
        f"(COMPILE_PAYBACK_FRAMES = {COMPILE_PAYBACK_FRAMES})")


if __name__ == "__main__":
    main()
