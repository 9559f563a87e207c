"""Job spec options of the run report (`report:` in a spec)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReportSpec(BaseModel):
    """Per-sequence previews (committed with the sequence) and `<run>/report.html` at the end."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    points: int = Field(default=100_000, ge=0)  # points in the preview render and in the GLB

    @property
    def kind(self) -> str:
        return "previews"
