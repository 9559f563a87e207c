"""Distributed batch reconstruction of capture sequences with ZipMap on Ray.

    from pipeline import load_spec, run_job, read_outputs
    summary = run_job(load_spec("job.yaml", ["engine.mode=chunked"]))   # RunFailedError if any sequence failed
    outputs = read_outputs(summary.run_uri)   # .frames (pyarrow), .point_cloud(id), ...
    export_run(summary.run_uri, ["colmap"])     # <run>/exports/colmap/<id>/; write_report(run_uri)
    views = render_views(outputs.scene_state_uri(id), "cams.json")  # runs with scene_state.enabled

Exports are imported lazily so that `pipeline.spec` (and the CLI's argument parsing) stay
cheap; Ray and torch load only when a run starts.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "JobSpec": "pipeline.spec",
    "load_spec": "pipeline.spec",
    "RunSummary": "pipeline.manifest",
    "run_job": "pipeline.api",
    "resume_job": "pipeline.api",
    "run_status": "pipeline.api",
    "read_outputs": "pipeline.reader",
    "RunOutputs": "pipeline.reader",
    "export_run": "pipeline.exports.run",
    "write_report": "pipeline.report.html",
    "RunFailedError": "pipeline.errors",
    "CameraRequest": "pipeline.rendering",
    "render_views": "pipeline.rendering",
    "render_sequence": "pipeline.rendering",
    "RenderJobSpec": "pipeline.render_job",
    "run_render_job": "pipeline.render_job",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
