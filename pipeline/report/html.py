"""`<run>/report.html`: one static page per run, with no server, no network and no library.

The page holds the run summary, its settings, the failures and one card per sequence (status,
numbers, the trajectory and point-cloud previews, links to the GLB scene, the PLY and the
exports). Previews are files next to the page (`previews/<id>/...`), loaded lazily: a
1,000-sequence page is about a megabyte of HTML and fetches only the images on screen.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..commit_record import committed_markers
from ..layout import EXPORTS, POINTS, PREVIEWS, RunLayout
from ..manifest import RunSummary, SequenceRecord, read_manifest
from ..redaction import get_logger
from ..spec import StorageSpec
from ..storage import Store
from .previews import POINTS_VIEW, SCENE, STATS, TRAJECTORY

logger = get_logger(__name__)
THUMB = 160  # px: previews are shown at half size, full size on click

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 24px 40px;color:#222;background:#fafaf8}
h1{font-size:22px;margin:20px 0 4px}h2{font-size:17px;margin:20px 0 8px}
.row{display:flex;flex-wrap:wrap;gap:8px 40px}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #e4e4e0}
th{font-weight:600;background:#f0f0ec}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;color:#fff;vertical-align:1px}
.done,.succeeded{background:#2e7d32}.failed{background:#c62828}.partial{background:#ef6c00}
.pending,.running,.incomplete{background:#757575}
#cards{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #ddd;border-radius:6px;
padding:8px 10px;width:336px}.card h3{font-size:14px;margin:0 0 6px;word-break:break-all}
.card img{width:160px;height:160px;object-fit:contain;background:#f6f6f4;border:1px solid #eee;margin-right:2px}
.nums{display:grid;grid-template-columns:auto auto auto auto;gap:0 8px;margin:4px 0;font-size:12px}
.nums dt{color:#666}.nums dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}
.err{color:#c62828;font-size:12px;word-break:break-word}.small{font-size:12px;color:#555}
.hidden{display:none}#filter{margin:0 8px 12px 0;padding:3px 6px}
"""

SCRIPT = """
const q=document.getElementById('filter'),s=document.getElementById('status'),n=document.getElementById('shown');
function apply(){const t=q.value.toLowerCase(),st=s.value;let k=0;
for(const c of document.querySelectorAll('.card')){const ok=(!t||c.dataset.id.toLowerCase().includes(t))&&
(!st||c.dataset.status===st);c.classList.toggle('hidden',!ok);if(ok)k++;}n.textContent=k;}
q.addEventListener('input',apply);s.addEventListener('change',apply);
"""


def report_at_end(spec: Any) -> None:
    """The coordinator's last step: the report of the run it just ran (previews were made by the
    actors; `zipmap-pipeline report` fills in those of older sequences). Never fails the run."""
    if not spec.report.enabled:
        return
    try:
        write_report(spec.run_uri, storage=spec.storage, fill_previews=False)
    except Exception as exc:
        logger.warning("could not write the run report: %s", exc)


def write_report(
    run_uri: str,
    *,
    storage: StorageSpec | None = None,
    fill_previews: bool = True,
    workers: int = 2,
    on_done: Callable[[str], None] | None = None,
) -> str:
    """Write `<run>/report.html` (making missing previews first, unless `fill_previews` is
    False); returns its URI."""
    from ..exports.run import require_run_folder

    run_uri = run_uri.rstrip("/")
    store, layout = Store(run_uri, storage), RunLayout(run_uri)
    require_run_folder(store, layout)
    committed = committed_markers(store, layout)
    missing = [sid for sid, marker in committed.items() if PREVIEWS not in marker.get("outputs", {})]
    if fill_previews and missing:
        from ..api import load_run_spec
        from ..exports.run import write_derived
        from ..exports.writers import derived_writers

        spec = load_run_spec(run_uri, storage=storage)
        report = spec.report if spec.report.enabled else spec.report.model_copy(update={"enabled": True})
        write_derived(run_uri, derived_writers([], report), missing, storage, workers, on_done)
        committed = committed_markers(store, layout)
    page = render_report(store, layout, committed)
    store.write_bytes(layout.report, page.encode())
    return layout.report


def render_report(store: Store, layout: RunLayout, committed: dict[str, dict[str, Any]]) -> str:
    """The page's HTML from what the run folder holds now."""
    stored, spec = _read_json(store, layout.summary), _read_json(store, layout.spec)
    records = read_manifest(store, layout)
    for sid, marker in committed.items():
        records[sid] = SequenceRecord.from_marker(marker)
    run_id = layout.run_uri.rsplit("/", 1)[-1]
    summary = RunSummary.from_records(run_id, layout.run_uri, list(records.values()), 0.0, 0)
    stats = _read_stats(store, layout, committed)
    rows = [
        ("status", _badge(summary.status)),
        ("sequences", f"{summary.sequences} ({summary.done} done, {summary.failed} failed, {summary.pending} pending)"),
        ("frames", f"{summary.frames:,}"),
        ("points", f"{summary.points:,}"),
        ("elapsed", f"{stored['elapsed_s']:.1f} s" if "elapsed_s" in stored else "-"),
        ("frames/s", f"{stored['frames_per_s']:.2f}" if "frames_per_s" in stored else "-"),
        ("run", html.escape(layout.run_uri)),
    ]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>run {html.escape(summary.run_id)}</title><style>{STYLE}</style></head><body>",
        f"<h1>zipmap-pipeline run {html.escape(summary.run_id)}</h1>",
        f"<div class=small>report written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M:%S')} UTC</div>",
        "<div class=row><div><h2>Summary</h2>",
        _table(rows),
        "</div><div><h2>Settings</h2>",
        _table(_settings(spec, list(records.values()))),
        "</div></div>",
    ]
    failed = [r for r in records.values() if r.status == "failed"]
    if failed:
        parts.append(f"<h2>Failures ({len(failed)})</h2>")
        parts.append(
            _table(
                [(html.escape(r.sequence_id), html.escape(r.error_kind or ""), html.escape(r.error or ""))
                 for r in sorted(failed, key=lambda r: r.sequence_id)],
                header=("sequence", "kind", "error"),
            )
        )
    options = "".join(f"<option>{s}</option>" for s in ("done", "failed", "pending", "running"))
    parts += [
        f"<h2>Sequences (<span id=shown>{len(records)}</span> of {len(records)})</h2>",
        "<input id=filter placeholder='filter by id'>",
        f"<select id=status><option value=''>any status</option>{options}</select>",
        "<div id=cards>",
        *(_card(records[sid], committed.get(sid), stats.get(sid)) for sid in sorted(records)),
        "</div>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def _read_json(store: Store, uri: str) -> dict[str, Any]:
    try:
        return store.read_json(uri)
    except (FileNotFoundError, ValueError):
        return {}


def _read_stats(store: Store, layout: RunLayout, committed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every committed sequence's previews/stats.json (fetched concurrently on object stores)."""
    wanted = {
        sid: f"{layout.final(sid, PREVIEWS)}/{STATS}" for sid, m in committed.items() if PREVIEWS in m["outputs"]
    }
    if not wanted:
        return {}
    try:
        blobs = store.read_many(list(wanted.values()))
    except (FileNotFoundError, OSError) as exc:  # a report without numbers beats no report
        logger.warning("could not read preview statistics: %s", exc)
        return {}
    return {sid: json.loads(data) for sid, data in zip(wanted, blobs)}


def _settings(spec: dict[str, Any], records: list[SequenceRecord]) -> list[tuple[str, str]]:
    if not spec:
        return [("spec", "spec.json not found")]
    model, engine, pre, pc = (spec.get(k, {}) for k in ("model", "engine", "preprocess", "point_cloud"))
    exports = ", ".join(e["format"] for e in spec.get("exports", [])) or "none"
    ran = Counter(_ran_with(json.loads(r.engine)) for r in records if r.engine)
    values = [
        ("model", f"{model.get('preset')} ({model.get('checkpoint') or 'random weights'})"),
        ("engine", f"{engine.get('mode')}, {engine.get('dtype')}"),
        ("ran with", "; ".join(f"{how} ({n} sequence{'s' * (n != 1)})" for how, n in ran.most_common()) or "-"),
        ("input size", f"{pre.get('size')} ({pre.get('mode')})"),
        ("point cloud", f"confidence >= {pc.get('conf_threshold')}, voxel {pc.get('voxel_size') or 'none'}"),
        ("exports", exports),
    ]
    return [(k, html.escape(str(v))) for k, v in values]


def _ran_with(engine: dict[str, Any]) -> str:
    """A sequence's engine as it ran ("auto" decided per sequence in the model actor)."""
    words = [engine.get("mode"), engine.get("dtype")]
    flags = (("fast", "fast"), ("compiled", "compile"), ("fp8", "fp8"))
    words += [word for word, key in flags if engine.get(key) is True]
    if (engine.get("frame_parallel") or 1) > 1:
        words.append(f"{engine['frame_parallel']} GPUs")
    return ", ".join(str(w) for w in words if w)


def _card(record: SequenceRecord, marker: dict[str, Any] | None, stats: dict[str, Any] | None) -> str:
    sid = record.sequence_id
    outputs = (marker or {}).get("outputs", {})
    numbers = [
        ("frames", _fmt(record.num_frames)),
        ("points", _fmt(record.num_points)),
        ("infer", f"{_fmt(record.infer_s, '.2f')} s"),
        ("total", f"{_fmt(record.total_s, '.2f')} s"),
    ]
    if stats:
        numbers += [
            ("path", _fmt(stats.get("path_length"), ".3g")),
            ("depth", _fmt(stats.get("median_depth"), ".3g")),
            ("conf.", _fmt(stats.get("camera_conf"), ".3g")),
            ("scene", _fmt(stats.get("scene_scale"), ".3g")),
        ]
    body = [
        f"<div class=card data-id='{html.escape(sid)}' data-status={record.status}>",
        f"<h3>{html.escape(sid)} {_badge(record.status)}</h3>",
    ]
    if PREVIEWS in outputs:
        body.append(
            "".join(
                f"<a href='{PREVIEWS}/{sid}/{name}'><img loading=lazy decoding=async width={THUMB} height={THUMB} "
                f"alt='{alt} of {html.escape(sid)}' src='{PREVIEWS}/{sid}/{name}'></a>"
                for name, alt in ((TRAJECTORY, "top-down trajectory"), (POINTS_VIEW, "point cloud"))
            )
        )
    body.append("<dl class=nums>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in numbers) + "</dl>")
    links = []
    if PREVIEWS in outputs:
        links.append(f"<a href='{PREVIEWS}/{sid}/{SCENE}'>scene.glb</a>")
    if POINTS in outputs:
        links.append(f"<a href='{POINTS}/{sid}.ply'>{sid}.ply</a>")
    links += [f"<a href='{kind}/{sid}/'>{kind[len(EXPORTS) + 1:]}</a>" for kind in sorted(outputs)
              if kind.startswith(f"{EXPORTS}/")]
    if links:
        body.append("<div class=small>" + " &middot; ".join(links) + "</div>")
    if record.error and record.status != "done":
        body.append(f"<div class=err>{html.escape(record.error_kind or '')}: {html.escape(record.error)}</div>")
    body.append("</div>")
    return "".join(body)


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{cells}</table>"


def _badge(status: str) -> str:
    return f"<span class='badge {status}'>{status}</span>"


def _fmt(value: Any, spec: str = ",") -> str:
    return "-" if value is None else format(value, spec)
