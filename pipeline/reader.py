"""Reading a run back: only committed sequences count, whatever else lies in the folder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .commit import committed_sequences
from .layout import DEPTH, FRAMES, POINTS, STATE, RunLayout
from .manifest import MANIFEST_SCHEMA
from .pointcloud import read_ply
from .spec import StorageSpec
from .storage import Store
from .tables import DEPTH_SCHEMA, FRAMES_SCHEMA, PARTITIONING


@dataclass
class RunOutputs:
    """The committed results of a run, as Arrow tables (and Ray datasets on request)."""

    run_uri: str
    layout: RunLayout
    committed: dict[str, dict[str, Any]]  # commit marker records by sequence id
    manifest: pa.Table
    frames: pa.Table  # FRAMES_SCHEMA, sorted by (sequence_id, frame_index)
    store: Store

    def depth(self) -> pa.Table:
        """Depth maps of all committed sequences (empty if the run did not save them)."""
        return self._read(DEPTH, DEPTH_SCHEMA)

    def point_cloud(self, sequence_id: str) -> np.ndarray:
        """The sequence's PLY vertices (x y z red green blue confidence)."""
        if POINTS not in self.committed[sequence_id].get("outputs", {}):
            raise KeyError(f"sequence {sequence_id} has no point cloud")
        return read_ply(self.store.read_bytes(RunLayout(self.run_uri).final(sequence_id, POINTS)))

    def scene_state_uri(self, sequence_id: str) -> str:
        """Where the sequence's scene state lies (runs with scene_state.enabled); load it with
        `zipmap_core.scene_state.SceneState.load`, or render from it with `pipeline.render_views`."""
        record = self.committed.get(sequence_id)
        if record is None:
            raise LookupError(f"sequence {sequence_id!r} is not committed in {self.run_uri}")
        uri = record.get("outputs", {}).get(STATE)
        if uri is None:
            raise LookupError(
                f"sequence {sequence_id!r} of {self.run_uri} has no scene state (the run had scene_state.enabled off)"
            )
        return uri

    def frames_dataset(self):
        """The frames of committed sequences as a ray.data Dataset (needs ray[data])."""
        try:
            import ray.data
        except ImportError as exc:
            raise ImportError(f"frames_dataset() needs Ray Data: pip install 'ray[data]' ({exc})") from exc

        from ray.data.datasource.partitioning import Partitioning

        files = self._files(FRAMES)
        partitioning = Partitioning(
            "hive", base_dir=self.store.path(self.layout.dataset_dir(FRAMES)), field_types={"sequence_id": str}
        )
        return ray.data.read_parquet(
            [self.store.path(u) for u in files], filesystem=self.store.fs, partitioning=partitioning
        )

    def _files(self, kind: str) -> list[str]:
        # where the layout puts them in this run's folder: markers store URIs with credentials redacted
        layout = RunLayout(self.run_uri)
        return sorted(layout.final(sid, kind) for sid, r in self.committed.items() if kind in r.get("outputs", {}))

    def _read(self, kind: str, schema: pa.Schema) -> pa.Table:
        files = self._files(kind)
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
    committed = committed_sequences(store, layout)
    try:
        manifest = pq.read_table(io.BytesIO(store.read_bytes(layout.manifest)))
    except FileNotFoundError:
        manifest = MANIFEST_SCHEMA.empty_table()
    outputs = RunOutputs(
        run_uri=layout.run_uri,
        layout=layout,
        committed=committed,
        manifest=manifest,
        frames=FRAMES_SCHEMA.empty_table(),
        store=store,
    )
    outputs.frames = outputs._read(FRAMES, FRAMES_SCHEMA)
    return outputs
