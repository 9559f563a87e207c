"""Evaluating a whole run against a synthetic dataset and printing the result as a table.

Predictions are found per sequence (the dataset folder name is the pipeline's sequence id) in
either of two layouts under the prediction root:

- a pipeline run (see pipeline/layout.py): `frames/sequence_id=<id>/*.parquet` with per-frame
  `extrinsic` (3x4) and `intrinsic` (3x3), plus `depth/sequence_id=<id>/*.parquet` when the run
  saved depth (without it only camera metrics are computed);
- plain arrays: `<id>.npz` or `<id>/predictions.npz` with extrinsics, intrinsics, depth and
  optionally world_points.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from zipmap_core.synthetic.dataset import list_sequences, read_ground_truth, read_meta

from .baseline import trivial_prediction
from .metrics import METRIC_NAMES, DepthAlignment, evaluate_sequence, nanmean
from .plotting import plot_trajectories

Predictor = Callable[[str, dict[str, np.ndarray]], "dict[str, np.ndarray] | None"]


def _read_parquet_folder(fs: fsspec.AbstractFileSystem, folder: str) -> pa.Table | None:
    if not fs.isdir(folder):
        return None
    parts = sorted(fs.glob(f"{folder}/*.parquet"))
    if not parts:
        return None
    table = pa.concat_tables([pq.read_table(io.BytesIO(fs.cat_file(p))) for p in parts])
    return table.sort_by("frame_index")


def _from_pipeline_run(fs: fsspec.AbstractFileSystem, root: str, sequence_id: str) -> dict[str, np.ndarray] | None:
    frames = _read_parquet_folder(fs, f"{root}/frames/sequence_id={sequence_id}")
    if frames is None:
        return None
    count = frames.num_rows
    if frames.column("frame_index").to_pylist() != list(range(count)):
        raise ValueError(f"{sequence_id}: frame indices of the run are not 0..{count - 1}")
    pred = {
        "extrinsics": np.asarray(frames.column("extrinsic").to_pylist(), np.float32).reshape(count, 3, 4),
        "intrinsics": np.asarray(frames.column("intrinsic").to_pylist(), np.float32).reshape(count, 3, 3),
    }
    depth = _read_parquet_folder(fs, f"{root}/depth/sequence_id={sequence_id}")
    if depth is not None:
        maps = zip(*(depth.column(name).to_pylist() for name in ("depth", "height", "width")))
        pred["depth"] = np.stack([np.asarray(d, np.float32).reshape(h, w) for d, h, w in maps])
    return pred


def run_predictor(pred_uri: str, storage_options: dict | None = None) -> Predictor:
    """Reads each sequence's prediction from a pipeline run or from npz files under `pred_uri`."""
    fs, root = fsspec.core.url_to_fs(pred_uri, **(storage_options or {}))
    root = root.rstrip("/")

    def predict(sequence_id: str, gt: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        found = _from_pipeline_run(fs, root, sequence_id)
        if found is not None:
            return found
        for candidate in (f"{root}/{sequence_id}.npz", f"{root}/{sequence_id}/predictions.npz"):
            if fs.isfile(candidate):
                with np.load(io.BytesIO(fs.cat_file(candidate))) as data:
                    return {key: data[key] for key in data.files}
        return None

    return predict


def trivial_predictor() -> Predictor:
    return lambda sequence_id, gt: trivial_prediction(gt)


def evaluate_dataset(
    predictor: Predictor,
    gt_uri: str,
    *,
    storage_options: dict | None = None,
    depth_alignment: DepthAlignment = "frame",
    max_points: int = 10_000,
    plots_dir: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per dataset sequence: its name, kinds, frame count, status and metrics."""
    rows = []
    for name in tqdm(list_sequences(gt_uri, storage_options), desc="evaluating", disable=not progress):
        folder = f"{gt_uri.rstrip('/')}/{name}"
        meta = read_meta(folder, storage_options)
        gt = read_ground_truth(folder, storage_options)
        row: dict[str, Any] = {"sequence": name, "scene": meta.get("scene"), "trajectory": meta.get("trajectory"),
                               "frames": int(gt["depth"].shape[0])}
        pred = predictor(name, gt)
        if pred is None:
            rows.append({**row, "status": "missing", **dict.fromkeys(METRIC_NAMES, math.nan)})
            continue
        row.update(status="ok", **evaluate_sequence(pred, gt, depth_alignment=depth_alignment, max_points=max_points))
        if plots_dir is not None and pred.get("extrinsics") is not None:
            target = f"{plots_dir.rstrip('/')}/{name}.png"
            row["plot"] = plot_trajectories(pred["extrinsics"], gt["extrinsics"], target, name)
        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every metric over the sequences where it is defined."""
    return {name: nanmean([row[name] for row in rows]) for name in METRIC_NAMES}


_COLUMNS = (
    ("sequence", "sequence", 12, None),
    ("scene", "scene", 8, None),
    ("trajectory", "trajectory", 11, None),
    ("frames", "S", 4, None),
    ("depth_abs_rel", "AbsRel", 8, ".4f"),
    ("depth_delta_1_25", "d<1.25", 8, ".4f"),
    ("ate", "ATE", 9, ".4f"),
    ("rpe_trans", "RPE-t", 9, ".4f"),
    ("rpe_rot_deg", "RPE-r(deg)", 10, ".3f"),
    ("pc_accuracy", "Acc", 9, ".4f"),
    ("pc_completeness", "Comp", 9, ".4f"),
)


def _cell(value: Any, width: int, fmt: str | None) -> str:
    if fmt is None:
        text = "" if value is None else str(value)
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        text = "-"
    else:
        text = format(value, fmt)
    return text.rjust(width) if fmt else text.ljust(width)


def format_table(rows: list[dict[str, Any]], means: dict[str, float]) -> str:
    """A fixed-width table: one line per sequence, then the means."""
    header = " ".join(_cell(title, width, None).rjust(width) if fmt else _cell(title, width, None)
                      for _, title, width, fmt in _COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        line = " ".join(_cell(row.get(key), width, fmt) for key, _, width, fmt in _COLUMNS)
        lines.append(line + ("  (missing)" if row.get("status") == "missing" else ""))
    lines.append("-" * len(header))
    mean_row = {"sequence": "mean", "frames": None, **means}
    lines.append(" ".join(_cell(mean_row.get(key), width, fmt) for key, _, width, fmt in _COLUMNS))
    return "\n".join(lines)
