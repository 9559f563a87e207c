"""A GLB (binary glTF 2.0) scene of a sequence: its points and its cameras, like the released
ZipMap demo's (a coloured point cloud plus one frustum per camera, coloured by frame order).

Small enough to write by hand: two meshes, one POINTS and one LINES primitive, positions as float32
and colours as normalised RGBA bytes in one buffer. Positions stay in the run's world (the first
camera's OpenCV frame); the root node turns that into glTF's y-up, z-towards-the-viewer axes, so
viewers open the scene as the first camera saw it.
"""

from __future__ import annotations

import json
import struct

import numpy as np

FLOAT, UNSIGNED_BYTE = 5126, 5121
ARRAY_BUFFER = 34962
POINTS, LINES = 0, 1
OPENCV_TO_GLTF = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1]  # column-major diag(1, -1, -1, 1)


def scene_glb(
    xyz: np.ndarray, rgb: np.ndarray, camera_to_world: np.ndarray, fov: np.ndarray, size: float
) -> bytes:
    """points [n, 3] with colours [n, 3] uint8; cameras [m, 4, 4] (OpenCV axes) with their half
    fields of view [m, 2] (x, y, radians), drawn as frustums `size` deep."""
    lines, colours = frustum_lines(camera_to_world, fov, size)
    meshes = [("points", xyz, rgb, POINTS), ("cameras", lines, colours, LINES)]
    return write_glb([m for m in meshes if len(m[1])])


def frustum_lines(camera_to_world: np.ndarray, fov: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Line-segment end points [k, 3] and colours [k, 3]: per camera its apex to the four image
    corners, the image rectangle, and a tick above the image's top edge (which way is up)."""
    if not len(camera_to_world):
        return np.empty((0, 3), np.float32), np.empty((0, 3), np.uint8)
    tx, ty = np.tan(fov[:, 0]) * size, np.tan(fov[:, 1]) * size
    zeros, depth = np.zeros_like(tx), np.full_like(tx, size)
    # camera-frame points: apex, corners (top-left, top-right, bottom-right, bottom-left), tick tip
    local = np.stack(
        [
            np.stack([zeros, zeros, zeros], 1),
            np.stack([-tx, -ty, depth], 1),
            np.stack([tx, -ty, depth], 1),
            np.stack([tx, ty, depth], 1),
            np.stack([-tx, ty, depth], 1),
            np.stack([zeros, -1.6 * ty, depth], 1),
        ],
        axis=1,
    )  # [m, 6, 3]
    world = np.einsum("mij,mkj->mki", camera_to_world[:, :3, :3], local) + camera_to_world[:, None, :3, 3]
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (2, 3), (3, 4), (4, 1), (1, 5), (5, 2)]
    ends = world[:, [i for pair in pairs for i in pair]]  # [m, 20, 3]
    colours = np.repeat(rainbow(len(world))[:, None, :], ends.shape[1], axis=1)
    return ends.reshape(-1, 3).astype(np.float32), colours.reshape(-1, 3)


def rainbow(n: int) -> np.ndarray:
    """[n, 3] uint8 colours running from red through green to violet (frame order)."""
    hue = np.linspace(0.0, 0.8, max(n, 1))[:n] * 6.0
    channel = lambda shift: np.clip(np.abs((hue + shift) % 6.0 - 3.0) - 1.0, 0.0, 1.0)  # noqa: E731
    return np.rint(np.stack([channel(0.0), channel(4.0), channel(2.0)], axis=1) * 255).astype(np.uint8)


def write_glb(meshes: list[tuple[str, np.ndarray, np.ndarray, int]]) -> bytes:
    """(name, positions [n, 3], colours [n, 3] uint8, primitive mode) per mesh -> GLB bytes."""
    blob = bytearray()
    views, accessors, gltf_meshes = [], [], []

    def add(data: bytes, **accessor) -> int:
        while len(blob) % 4:
            blob.append(0)
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": ARRAY_BUFFER})
        blob.extend(data)
        accessors.append({"bufferView": len(views) - 1, **accessor})
        return len(accessors) - 1

    for name, positions, colours, mode in meshes:
        positions = np.ascontiguousarray(positions, np.float32)
        rgba = np.concatenate([np.asarray(colours, np.uint8), np.full((len(colours), 1), 255, np.uint8)], axis=1)
        position = add(
            positions.tobytes(), componentType=FLOAT, count=len(positions), type="VEC3",
            min=positions.min(0).tolist(), max=positions.max(0).tolist(),
        )
        colour = add(rgba.tobytes(), componentType=UNSIGNED_BYTE, normalized=True, count=len(rgba), type="VEC4")
        primitive = {"attributes": {"POSITION": position, "COLOR_0": colour}, "mode": mode}
        gltf_meshes.append({"name": name, "primitives": [primitive]})
    document = {
        "asset": {"version": "2.0", "generator": "zipmap-pipeline"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [
            {"name": "world", "matrix": OPENCV_TO_GLTF, "children": list(range(1, len(gltf_meshes) + 1))},
            *({"name": m["name"], "mesh": i} for i, m in enumerate(gltf_meshes)),
        ],
        "meshes": gltf_meshes,
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    if not gltf_meshes:
        del document["meshes"], document["accessors"], document["bufferViews"], document["buffers"]
    json_chunk = json.dumps(document, separators=(",", ":")).encode()
    json_chunk += b" " * (-len(json_chunk) % 4)
    bin_chunk = bytes(blob) + b"\0" * (-len(blob) % 4)
    chunks = struct.pack("<II", len(json_chunk), 0x4E4F534A) + json_chunk
    if gltf_meshes:
        chunks += struct.pack("<II", len(bin_chunk), 0x004E4942) + bin_chunk
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks
