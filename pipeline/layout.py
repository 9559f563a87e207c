"""Where everything of a run lives, in one place, so writers and readers cannot disagree.

<output>/<run_id>/
  spec.json                              resolved spec, secrets redacted (resume reads it)
  manifest.parquet                       one row per sequence (status, attempts, timings, ...)
  summary.json                           the run's final summary
  frames/sequence_id=<id>/part-0.parquet per-frame cameras and depth statistics
  depth/sequence_id=<id>/part-0.parquet  per-frame depth + confidence maps (save_depth)
  points/<id>.ply                        the sequence's point cloud
  states/<id>.safetensors                its scene state (scene_state.enabled)
  _commits/<id>.json                     commit marker: the sequence's outputs are complete
  _lease/<generation>.json               the driver's lease on the run and its live progress
  _staging/<id>/<attempt_id>/...         an attempt's outputs before they are committed

Sequence and attempt ids are checked (pipeline.names) wherever they become part of a path.
"""

from __future__ import annotations

from dataclasses import dataclass

from .names import check_name
from .storage import join

FRAMES = "frames"
DEPTH = "depth"
POINTS = "points"
STATE = "states"
OUTPUT_KINDS = (FRAMES, POINTS, DEPTH, STATE)
STAGED_FILES = {FRAMES: "frames.parquet", DEPTH: "depth.parquet", POINTS: "points.ply", STATE: "state.safetensors"}
# kinds stored as one file per sequence, <kind>/<id><suffix>; the others are hive partitions
FILE_SUFFIXES = {POINTS: ".ply", STATE: ".safetensors"}


@dataclass(frozen=True)
class RunLayout:
    run_uri: str

    @property
    def spec(self) -> str:
        return join(self.run_uri, "spec.json")

    @property
    def manifest(self) -> str:
        return join(self.run_uri, "manifest.parquet")

    @property
    def summary(self) -> str:
        return join(self.run_uri, "summary.json")

    @property
    def commits(self) -> str:
        return join(self.run_uri, "_commits")

    @property
    def staging_root(self) -> str:
        return join(self.run_uri, "_staging")

    @property
    def leases(self) -> str:
        return join(self.run_uri, "_lease")

    def lease(self, generation: int) -> str:
        """One driver session's lease; a later session takes the run over with the next number."""
        return join(self.leases, f"{generation:010d}.json")

    def commit_marker(self, sequence_id: str) -> str:
        return join(self.commits, f"{_sequence(sequence_id)}.json")

    def staging(self, sequence_id: str, attempt_id: str) -> str:
        return join(self.staging_root, _sequence(sequence_id), check_name(attempt_id, "attempt id"))

    def staged(self, sequence_id: str, attempt_id: str, kind: str) -> str:
        return join(self.staging(sequence_id, attempt_id), STAGED_FILES[kind])

    def dataset_dir(self, kind: str) -> str:
        return join(self.run_uri, kind)

    def final(self, sequence_id: str, kind: str) -> str:
        """The committed location of one output of a sequence."""
        if kind in FILE_SUFFIXES:
            return join(self.run_uri, kind, f"{_sequence(sequence_id)}{FILE_SUFFIXES[kind]}")
        return join(self.run_uri, kind, f"sequence_id={_sequence(sequence_id)}", "part-0.parquet")

    def final_owner(self, sequence_id: str, kind: str) -> str:
        """What to delete to remove one output of a sequence (its partition folder, or file)."""
        if kind in FILE_SUFFIXES:
            return self.final(sequence_id, kind)
        return join(self.run_uri, kind, f"sequence_id={_sequence(sequence_id)}")

    @staticmethod
    def owner_sequence(kind: str, name: str) -> str | None:
        """The sequence an entry of `dataset_dir(kind)` (a listed path) belongs to, if any."""
        name = name.rstrip("/").rsplit("/", 1)[-1]
        if kind in FILE_SUFFIXES:
            suffix = FILE_SUFFIXES[kind]
            return name[: -len(suffix)] if name.endswith(suffix) else None
        return name[len("sequence_id=") :] if name.startswith("sequence_id=") else None


def _sequence(sequence_id: str) -> str:
    return check_name(sequence_id, "sequence id")
