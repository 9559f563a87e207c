"""Where everything of a run lives, in one place, so writers and readers cannot disagree.

<output>/<run_id>/
  spec.json                              resolved spec, secrets redacted (resume reads it)
  manifest.parquet                       one row per sequence (status, attempts, timings, ...)
  summary.json                           the run's final summary
  frames/sequence_id=<id>/part-0.parquet per-frame cameras and depth statistics
  depth/sequence_id=<id>/part-0.parquet  per-frame depth + confidence maps (save_depth)
  points/<id>.ply                        the sequence's point cloud
  states/<id>.safetensors                its scene state (scene_state.enabled)
  previews/<id>/                         trajectory and point-cloud PNGs, GLB scene (report.enabled)
  exports/<format>/<id>/                 COLMAP model, nerfstudio transforms.json (exports: [...])
  report.html                            the run report (links the previews)
  _commits/<id>.json                     commit marker: the sequence's outputs are complete
  _commit_intents/<id>.json              the sequence's commit state may differ from the manifest
  _lease/<generation>.json               the driver's lease on the run and its live progress
  _staging/<id>/<attempt_id>/...         an attempt's outputs before they are committed

The per-sequence outputs are described once, in `OUTPUT_KINDS`: committing, cleaning up and
verifying a run go over that table, so a new kind of output is one more entry there. Folder
outputs (previews, exports/<format>: `output_kind`) are committed the same way but not verified
by size. Sequence and
attempt ids are checked (pipeline.names) wherever they become part of a path; names listed from
the store that are no safe name are no sequence's.
"""

from __future__ import annotations

from dataclasses import dataclass

from .names import SAFE_NAME, check_name
from .storage import join

FRAMES = "frames"
DEPTH = "depth"
POINTS = "points"
STATE = "states"
PREVIEWS = "previews"
EXPORTS = "exports"  # one kind per format: "exports/colmap", ...
PARTITION_KEY = "sequence_id"


@dataclass(frozen=True)
class OutputKind:
    """One kind of per-sequence output: its staged name and where it is published.

    With `suffix` None the output is a hive partition, `<kind>/sequence_id=<id>/part-0.parquet`
    (so the folder reads as one dataset); otherwise one file per sequence, `<kind>/<id><suffix>`.
    A `folder` output (previews, exports) is a folder per sequence, `<kind>/<id>/`, staged as
    `<attempt>/<kind>/`: derived from the others, it may also be added after the commit.
    """

    name: str  # also its folder under the run
    staged_name: str
    suffix: str | None = None
    folder: bool = False


# the outputs a sequence is committed with (sizes recorded and verified: pipeline.commit_record)
OUTPUT_KINDS: dict[str, OutputKind] = {
    kind.name: kind
    for kind in (
        OutputKind(FRAMES, "frames.parquet"),
        OutputKind(DEPTH, "depth.parquet"),
        OutputKind(POINTS, "points.ply", suffix=".ply"),
        OutputKind(STATE, "state.safetensors", suffix=".safetensors"),
    )
}


def output_kind(name: str) -> OutputKind:
    """The kind called `name`: one of OUTPUT_KINDS, or a folder output (previews, exports/<format>)."""
    kind = OUTPUT_KINDS.get(name)
    if kind is not None:
        return kind
    if name == PREVIEWS or (name.startswith(f"{EXPORTS}/") and SAFE_NAME.fullmatch(name[len(EXPORTS) + 1 :])):
        return OutputKind(name, name, folder=True)
    raise KeyError(f"no output kind {name!r}")


def final_name(sequence_id: str, kind: str) -> str:
    """Where a sequence's output is published, relative to the kind's folder."""
    spec = output_kind(kind)
    if spec.folder:
        return sequence_id
    if spec.suffix is not None:
        return f"{sequence_id}{spec.suffix}"
    return f"{PARTITION_KEY}={sequence_id}/part-0.parquet"


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
    def report(self) -> str:
        return join(self.run_uri, "report.html")

    @property
    def commits(self) -> str:
        return join(self.run_uri, "_commits")

    @property
    def intents(self) -> str:
        return join(self.run_uri, "_commit_intents")

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

    def intent(self, sequence_id: str) -> str:
        return join(self.intents, f"{_sequence(sequence_id)}.json")

    def staging(self, sequence_id: str, attempt_id: str) -> str:
        return join(self.staging_root, _sequence(sequence_id), check_name(attempt_id, "attempt id"))

    def staged(self, sequence_id: str, attempt_id: str, kind: str) -> str:
        return join(self.staging(sequence_id, attempt_id), output_kind(kind).staged_name)

    def dataset_dir(self, kind: str) -> str:
        return join(self.run_uri, kind)

    def final(self, sequence_id: str, kind: str) -> str:
        """The committed location of one output of a sequence."""
        return join(self.run_uri, kind, final_name(_sequence(sequence_id), kind))

    def final_owner(self, sequence_id: str, kind: str) -> str:
        """What to delete to remove one output of a sequence (its partition folder, file or folder)."""
        spec = output_kind(kind)
        if spec.suffix is not None or spec.folder:
            return self.final(sequence_id, kind)
        return join(self.run_uri, kind, f"{PARTITION_KEY}={_sequence(sequence_id)}")

    def sequence_of(self, kind: str, relative: str) -> str | None:
        """The sequence a file below `dataset_dir(kind)` belongs to (`relative` to that folder),
        or None for a file that is no sequence's output."""
        spec = output_kind(kind)
        first, _, rest = relative.partition("/")
        if spec.folder:
            sid = first if rest else None
        elif spec.suffix is not None:
            sid = first[: -len(spec.suffix)] if not rest and first.endswith(spec.suffix) else None
        else:
            key, _, value = first.partition("=")
            sid = value if key == PARTITION_KEY and rest else None
        return sid if sid and SAFE_NAME.fullmatch(sid) else None


def _sequence(sequence_id: str) -> str:
    return check_name(sequence_id, "sequence id")
