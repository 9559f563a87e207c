"""How fast a large run's report opens: a real run of many small sequences, then report.html in
headless Chromium.

    python bench/report_load.py --sequences 1000       # tiny model, CPU, 2 frames of 112x84 each
    python bench/report_load.py --sequences 3          # a smoke check

Prints the time to write the report (`zipmap-pipeline report`, previews already there), its
size, and per load (a fresh browser profile each, --loads times): DOMContentLoaded, the load event,
first contentful paint and how many of the previews the browser fetched, then the time until
every preview has loaded after scrolling through the whole page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    args = _parse(argv)
    from bench.pipeline_throughput import prepare_inputs
    from pipeline import run_job
    from pipeline.report.html import write_report
    from pipeline.spec import load_spec
    from pipeline.testing.browser import chromium, load_page, wait_for_images

    work, input_prefix = prepare_inputs(args, "zipmap-bench-report-")
    run_uri = str(work / "runs" / "many")
    if not os.path.exists(os.path.join(run_uri, "summary.json")):
        spec = load_spec(
            {
                "input": {"prefix": input_prefix},
                "output": str(work / "runs"),
                "run_id": "many",
                "model": {"preset": "tiny", "allow_random_weights": True},
                "preprocess": {"size": args.size},
                "resources": {"device": "cpu", "num_actors": 1},
            }
        )
        start = time.perf_counter()
        summary = run_job(spec, progress=True)
        print(f"run: {summary.done} sequences in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    write_report(run_uri, fill_previews=False)
    write_s = time.perf_counter() - start
    page = os.path.join(run_uri, "report.html")
    loads, all_images = [], []
    for _ in range(args.loads):
        with chromium() as driver:
            loads.append(load_page(driver, f"file://{page}"))
            start = time.perf_counter()
            wait_for_images(driver, timeout_s=600)
            all_images.append(time.perf_counter() - start)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    result = {
        "sequences": args.sequences,
        "write_s": write_s,
        "html_bytes": os.path.getsize(page),
        "dom_content_loaded_ms": med([x.dom_content_loaded_ms for x in loads]),
        "load_ms": med([x.load_ms for x in loads]),
        "first_paint_ms": med([x.first_contentful_paint_ms or 0 for x in loads]),
        "images_at_load": med([x.images_loaded for x in loads]),
        "images": loads[0].images_total,
        "all_images_s": med(all_images),
    }
    print(
        f"{args.sequences} sequences: report written in {write_s:.2f} s, {result['html_bytes'] / 1e6:.2f} MB\n"
        f"median of {args.loads} loads: DOMContentLoaded {result['dom_content_loaded_ms']:.0f} ms, load event "
        f"{result['load_ms']:.0f} ms, first contentful paint {result['first_paint_ms']:.0f} ms, "
        f"{result['images_at_load']:.0f} of {result['images']} previews fetched by then; every preview loaded "
        f"{result['all_images_s']:.1f} s after scrolling through the page"
    )
    return result


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="reused: a finished run there is not run again")
    args = ap.parse_args(argv)
    args.input, args.checkpoint, args.preset = None, None, "tiny"
    return args


if __name__ == "__main__":
    main()
