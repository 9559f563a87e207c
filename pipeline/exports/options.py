"""What a job spec (or the `export` command) may ask of the export formats.

In a spec, `exports: [colmap, nerfstudio]` takes every format with its defaults; a mapping sets
options, e.g. `exports: [{format: colmap, points: 50000, images: source}]`. Exports are written
next to a sequence's other outputs and committed with them; they are not result settings, so a
resumed run may add or drop formats (`zipmap-pipeline export` fills in finished sequences).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

# "copy": the model-input images (what depth and intrinsics refer to) written into the export;
# "source": no copies, cameras at the original frames' resolution, images named after them
# (symbolic links next to the model when both sides are on a local disk); "none": no images.
ImageMode = Literal["copy", "source", "none"]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColmapExport(_Options):
    """A COLMAP sparse model per sequence: `sparse/0/` plus `images/`."""

    format: Literal["colmap"] = "colmap"
    points: int = Field(default=100_000, ge=0)  # points3D, sampled from the sequence's point cloud
    images: ImageMode = "copy"
    image_format: Literal["jpg", "png"] = "jpg"
    model_format: Literal["binary", "text", "both"] = "binary"

    @property
    def kind(self) -> str:
        return "exports/colmap"


class NerfstudioExport(_Options):
    """nerfstudio's `transforms.json` (also read by its Gaussian-splatting trainer, splatfacto)."""

    format: Literal["nerfstudio"] = "nerfstudio"
    points: int = Field(default=100_000, ge=0)  # sparse_pc.ply (ply_file_path); 0: none
    images: Literal["copy", "source"] = "copy"
    image_format: Literal["jpg", "png"] = "jpg"
    depth: bool = True  # depth maps as 16-bit PNG (depth_file_path)
    # PNG value = round(depth * depth_scale); 1000 stores millimetres of the model's unit, which is
    # nerfstudio's default depth_unit_scale_factor (1e-3). Depths beyond 65535 / depth_scale are 0.
    depth_scale: float = Field(default=1000.0, gt=0)

    @model_validator(mode="after")
    def _depth_at_image_resolution(self) -> NerfstudioExport:
        if self.images == "source" and self.depth:
            raise ValueError(
                "nerfstudio depth maps are at the model-input resolution: with images: source set depth: false"
            )
        return self

    @property
    def kind(self) -> str:
        return "exports/nerfstudio"


def _named(value: Any) -> Any:
    """A bare format name stands for that format with its defaults."""
    return {"format": value} if isinstance(value, str) else value


ExportOptions = Annotated[ColmapExport | NerfstudioExport, Field(discriminator="format"), BeforeValidator(_named)]
FORMATS = ("colmap", "nerfstudio")


def unique_formats(exports: list[Any]) -> list[Any]:
    """Validator: each format at most once (its outputs have one place per sequence)."""
    names = [e.format for e in exports]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"exports lists {', '.join(repeated)} more than once")
    return exports
