"""Reading a run back: only committed sequences count, whatever else lies in the folder.

The commit record is verified first (`pipeline.commit_record`): a sequence whose marker exists
but whose outputs are missing or incomplete is left out and reported in `torn` (a warning is
logged; `resume` redoes it), so one broken sequence never makes the whole run unreadable.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .commit_record import read_commits
from .layout import DEPTH, FRAMES, POINTS, STATE, RunLayout
from .manifest import MANIFEST_SCHEMA, SequenceRecord
from .pointcloud import read_ply
from .redaction import get_logger
from .spec import StorageSpec
from .storage import Store
from .tables import DEPTH_SCHEMA, FRAMES_SCHEMA, PARTITIONING

logger = get_logger(__name__)


@dataclass
class RunOutputs:
    """The committed results of a run, as Arrow tables (and Ray datasets on request)."""

    run_uri: str
    layout: RunLayout
    committed: dict[str, SequenceRecord]  # committed sequences whose outputs are complete, by id
    manifest: pa.Table
    frames: pa.Table  # FRAMES_SCHEMA, sorted by (sequence_id, frame_index)
    store: Store
    torn: dict[str, str] = field(default_factory=dict)  # committed, outputs missing: what is wrong

    def depth(self) -> pa.Table:
        """Depth maps of all committed sequences (empty if the run did not save them)."""
        return self._read(DEPTH, DEPTH_SCHEMA)

    def sequence_frames(self, sequence_id: str) -> list[dict[str, Any]]:
        """The frames-table rows of one committed sequence, in frame order."""
        mask = pa.compute.equal(self.frames["sequence_id"], sequence_id)
        return self.frames.filter(mask).to_pylist()

    def sequence_depth(self, sequence_id: str) -> pa.Table | None:
        """One committed sequence's depth maps (frame_index, height, width, depth, depth_conf, in
        frame order), or None if the run did not save them."""
        if DEPTH not in self.committed[sequence_id].output_kinds():
            return None
        data = self.store.read_bytes(self.layout.final(sequence_id, DEPTH))
        columns = ["frame_index", "height", "width", "depth", "depth_conf"]
        table = pq.read_table(io.BytesIO(data), columns=columns)
        order = table.column("frame_index").to_numpy()
        if (order[1:] < order[:-1]).any():  # written in frame order; sorting copies every map
            table = table.sort_by([("frame_index", "ascending")])
        return table

    def point_cloud(self, sequence_id: str) -> np.ndarray:
        """The sequence's PLY vertices (x y z red green blue confidence)."""
        if POINTS not in self.committed[sequence_id].output_kinds():
            raise KeyError(f"sequence {sequence_id} has no point cloud")
        return read_ply(self.store.read_bytes(self.layout.final(sequence_id, POINTS)))

    def files(self, kind: str) -> list[str]:
        """URIs of one output kind of every committed sequence, in sequence order (where the layout
        puts them in this run's folder: markers store URIs with credentials redacted)."""
        return [
            self.layout.final(sid, kind) for sid, r in sorted(self.committed.items()) if kind in r.output_kinds()
        ]

    def scene_state_uri(self, sequence_id: str) -> str:
        """Where the sequence's scene state lies (runs with scene_state.enabled); load it with
        `zipmap_core.scene_state.SceneState.load`, or render from it with `pipeline.render_views`."""
        record = self.committed.get(sequence_id)
        if record is None:
            raise LookupError(f"sequence {sequence_id!r} is not committed in {self.run_uri}")
        if STATE not in record.output_kinds():
            raise LookupError(
                f"sequence {sequence_id!r} of {self.run_uri} has no scene state (the run had scene_state.enabled off)"
            )
        return self.layout.final(sequence_id, STATE)  # in this run's folder: markers hold redacted URIs

    def frames_dataset(self):
        """The frames of committed sequences as a ray.data Dataset (needs ray[data])."""
        try:
            import ray.data
        except ImportError as exc:
            raise ImportError(f"frames_dataset() needs Ray Data: pip install 'ray[data]' ({exc})") from exc

        from ray.data.datasource.partitioning import Partitioning

        files = self.files(FRAMES)
        partitioning = Partitioning(
            "hive", base_dir=self.store.path(self.layout.dataset_dir(FRAMES)), field_types={"sequence_id": str}
        )
        return ray.data.read_parquet(
            [self.store.path(u) for u in files], filesystem=self.store.fs, partitioning=partitioning
        )

    def _read(self, kind: str, schema: pa.Schema) -> pa.Table:
        files = self.files(kind)
        if not files:
            return schema.empty_table()
        paths = [self.store.path(u) for u in files]
        dataset = ds.dataset(
            paths,
            schema=schema,
            format="parquet",
            filesystem=self.store.fs,
            partitioning=PARTITIONING,  # sequence_id from the path (files of format 1 also hold it)
            partition_base_dir=self.store.path(self.layout.dataset_dir(kind)),
        )
        return dataset.to_table().sort_by([("sequence_id", "ascending"), ("frame_index", "ascending")])


def read_outputs(run_uri: str, storage: StorageSpec | None = None) -> RunOutputs:
    store = Store(run_uri, storage)
    layout = RunLayout(run_uri.rstrip("/"))
    commits = read_commits(store, layout, verify=True)
    if commits.torn:
        logger.warning(
            "%d committed sequence(s) of %s have missing outputs and are left out (resume redoes them): %s",
            len(commits.torn),
            layout.run_uri,
            ", ".join(sorted(commits.torn)[:10]),
        )
    try:
        manifest = pq.read_table(io.BytesIO(store.read_bytes(layout.manifest)))
    except FileNotFoundError:
        manifest = MANIFEST_SCHEMA.empty_table()
    outputs = RunOutputs(
        run_uri=layout.run_uri,
        layout=layout,
        committed=commits.committed,
        manifest=manifest,
        frames=FRAMES_SCHEMA.empty_table(),
        store=store,
        torn=dict(commits.torn),
    )
    outputs.frames = outputs._read(FRAMES, FRAMES_SCHEMA)
    return outputs
