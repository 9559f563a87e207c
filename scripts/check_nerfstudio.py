"""Load a nerfstudio export with nerfstudio's own data parser and check it where nerfstudio is
installed (it does not install on CPU within reason for CI: about 8 GB with its CUDA torch).

    /path/to/nerfstudio-venv/bin/python scripts/check_nerfstudio.py <run>/exports/nerfstudio/<id>

Checks, with nerfstudio's code only (parser, Cameras, ray generation, depth loader):
1. the parser reads transforms.json, the images, the depth PNGs and the seed points;
2. with orientation, centring and scaling off, its cameras equal the file's (intrinsics, poses);
3. with its defaults (auto-orient "up", centre on poses, auto-scale), every pixel's ray walked to
   the depth nerfstudio reads from the PNG lands on the seed point cloud nerfstudio loaded:
   the median distance from a seed point to the nearest such surface point is printed and must be
   a small fraction of the scene size.
Exits 1 if a check fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(folder: str) -> int:
    import torch
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path
    from scipy.spatial import cKDTree

    data = Path(folder)
    doc = json.loads((data / "transforms.json").read_text())
    plain = NerfstudioDataParserConfig(
        data=data, downscale_factor=1, orientation_method="none", center_method="none",
        auto_scale_poses=False, eval_mode="all",
    ).setup().get_dataparser_outputs("train")
    cams = plain.cameras
    frames = sorted(doc["frames"], key=lambda f: f["file_path"])  # the parser sorts by file name
    expected = np.array([f["transform_matrix"] for f in frames])[:, :3]
    pose_err = float(np.abs(cams.camera_to_worlds.numpy() - expected).max())
    intr = torch.stack([cams.fx[:, 0], cams.fy[:, 0], cams.cx[:, 0], cams.cy[:, 0]], 1).numpy()
    intr_err = float(np.abs(intr - np.array([[f[k] for k in ("fl_x", "fl_y", "cx", "cy")] for f in frames])).max())
    print(f"{len(frames)} frames parsed; pose max |diff| {pose_err:.2e}, intrinsics max |diff| {intr_err:.2e}")

    # load_3D_points: what splatfacto (nerfstudio's Gaussian splatting) sets to read ply_file_path
    out = NerfstudioDataParserConfig(data=data, downscale_factor=1, eval_mode="all", load_3D_points=True).setup()
    outputs = out.get_dataparser_outputs("train")
    seeds = outputs.metadata["points3D_xyz"].numpy()
    depth_files = outputs.metadata["depth_filenames"]
    scale = outputs.dataparser_scale * outputs.metadata["depth_unit_scale_factor"]
    surface = []
    for i, depth_file in enumerate(depth_files):
        cam = outputs.cameras[i : i + 1]
        h, w = int(cam.height), int(cam.width)
        depth = get_depth_image_from_path(depth_file, h, w, scale).numpy()[..., 0]
        rays = cam.generate_rays(camera_indices=0, keep_shape=True)
        reach = depth * rays.metadata["directions_norm"][..., 0].numpy()  # z-depth -> distance along the ray
        points = rays.origins.numpy() + rays.directions.numpy() * reach[..., None]
        surface.append(points[depth > 0])
    surface = np.concatenate(surface)
    dist, _ = cKDTree(surface).query(seeds)
    size = float(np.linalg.norm(np.percentile(seeds, 95, 0) - np.percentile(seeds, 5, 0)))
    print(
        f"{len(seeds)} seed points, {len(surface)} depth points; seed-to-surface distance median "
        f"{np.median(dist) / size:.2e}, 95th percentile {np.percentile(dist, 95) / size:.2e} of the scene size"
    )
    ok = pose_err < 1e-5 and intr_err < 1e-3 and np.median(dist) < 5e-3 * size
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
