"""Writing reconstruction outputs: class meshes (PLY), the whole heart (GLB), the label volume.

The mesh formats are written here with numpy (binary PLY; glTF 2.0 binary with one node, mesh
and material per class): importing trimesh for them would cost a command-line run a second.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from isal import igzip

from heartvec.labels import LabelTable
from heartvec.surfaces import Surface

TAB10 = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
"""matplotlib's tab10, the class colours of every heartvec picture and of the web page."""


def class_colour(class_index: int) -> np.ndarray:
    """RGBA uint8 colour of a class: tab10 colour `class_index - 1` (cycling), opaque."""
    code = TAB10[(class_index - 1) % len(TAB10)]
    return np.array([int(code[i : i + 2], 16) for i in (1, 3, 5)] + [255], dtype=np.uint8)


def write_ply(surface: Surface, colour: np.ndarray, path: Path) -> None:
    """A binary little-endian PLY: float32 vertices with one RGBA colour each, triangles."""
    vertices = np.empty(len(surface.vertices), dtype=[("xyz", "<f4", 3), ("rgba", "u1", 4)])
    vertices["xyz"], vertices["rgba"] = surface.vertices, colour
    faces = np.empty(len(surface.faces), dtype=[("count", "u1"), ("corners", "<i4", 3)])
    faces["count"], faces["corners"] = 3, surface.faces
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {len(faces)}\n"
        "property list uchar int vertex_indices\nend_header\n"
    )
    with open(path, "wb") as file:
        file.write(header.encode("ascii"))
        file.write(vertices.tobytes())
        file.write(faces.tobytes())


_FLOAT, _UNSIGNED_BYTE, _UNSIGNED_INT = 5126, 5121, 5125  # glTF accessor component types
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963  # glTF buffer view targets
_TRIANGLES = 4


def write_glb(meshes: dict[str, tuple[Surface, np.ndarray]], path: Path) -> None:
    """A glTF 2.0 binary file: per entry of `meshes` (name -> surface, RGBA colour) a node and
    mesh of that name, positions (float32), the colour per vertex (COLOR_0) and as its
    material's base colour, and uint32 triangle indices. World millimetres as given (glTF's
    metre is not applied: viewers show the numbers as they are)."""
    gltf: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "heartvec"},
        "scene": 0,
        "scenes": [{"nodes": list(range(len(meshes)))}],
        "nodes": [],
        "meshes": [],
        "materials": [],
        "accessors": [],
        "bufferViews": [],
        "buffers": [],
    }
    blobs: list[bytes] = []
    offset = 0

    def add_view(data: np.ndarray, target: int) -> int:
        nonlocal offset
        blob = np.ascontiguousarray(data).tobytes()
        blob += b"\0" * (-len(blob) % 4)  # every view starts 4-byte aligned
        gltf["bufferViews"].append(
            {"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target}
        )
        blobs.append(blob)
        offset += len(blob)
        return len(gltf["bufferViews"]) - 1

    def add_accessor(data: np.ndarray, component: int, kind: str, target: int, **extra: Any) -> int:
        view = add_view(data, target)
        gltf["accessors"].append(
            {"bufferView": view, "componentType": component, "count": len(data), "type": kind}
            | extra
        )
        return len(gltf["accessors"]) - 1

    for index, (name, (surface, colour)) in enumerate(meshes.items()):
        positions = surface.vertices.astype(np.float32)
        attributes = {
            "POSITION": add_accessor(
                positions, _FLOAT, "VEC3", _ARRAY_BUFFER,
                min=positions.min(axis=0).tolist(), max=positions.max(axis=0).tolist(),
            ),
            "COLOR_0": add_accessor(
                np.tile(colour, (len(positions), 1)), _UNSIGNED_BYTE, "VEC4", _ARRAY_BUFFER,
                normalized=True,
            ),
        }  # fmt: skip
        indices = add_accessor(
            surface.faces.astype(np.uint32).ravel(), _UNSIGNED_INT, "SCALAR", _ELEMENT_ARRAY_BUFFER
        )
        primitive = {"attributes": attributes, "indices": indices, "mode": _TRIANGLES}
        gltf["materials"].append(
            {
                "name": name,
                "pbrMetallicRoughness": {
                    "baseColorFactor": (colour / 255).tolist(),
                    "metallicFactor": 0.0,
                    "roughnessFactor": 0.6,
                },
                "doubleSided": True,
            }
        )
        gltf["meshes"].append({"name": name, "primitives": [primitive | {"material": index}]})
        gltf["nodes"].append({"name": name, "mesh": index})
    gltf["buffers"].append({"byteLength": offset})
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    binary = b"".join(blobs)
    with open(path, "wb") as file:
        file.write(struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + 8 + len(binary)))
        file.write(struct.pack("<I4s", len(text), b"JSON") + text)
        file.write(struct.pack("<I4s", len(binary), b"BIN\0") + binary)


def write_meshes(meshes: dict[int, Surface], table: LabelTable, out_dir: Path) -> dict[int, Path]:
    """meshes/<index>_<name>.ply per class (world mm) and heart.glb with one node per class."""
    mesh_dir = out_dir / "meshes"
    mesh_dir.mkdir(parents=True, exist_ok=True)
    paths, scene = {}, {}
    for class_index, surface in sorted(meshes.items()):
        name = table.class_name(class_index)
        colour = class_colour(class_index)
        paths[class_index] = mesh_dir / f"{class_index}_{name}.ply"
        write_ply(surface, colour, paths[class_index])
        scene[name] = (surface, colour)
    write_glb(scene, out_dir / "heart.glb")
    return paths


def write_label_volume(
    classes: np.ndarray, affine: np.ndarray, table: LabelTable, path: Path
) -> None:
    """Class indices -> the input's label values (its label table), on the input's grid; uint8
    when every value fits, else int16.

    One lookup-table pass instead of a pass per class; uint8 halves what gzip compresses. A
    class the table gives no value (the reconstruction keeps only the input's classes: none) is
    written as background."""
    lookup = np.zeros(max(table.num_classes, int(classes.max(initial=0))) + 1, dtype=np.int64)
    for value, class_index in sorted(table.class_of_value.items(), reverse=True):
        lookup[class_index] = value  # the first value of a class, as `value_of_class`
    values = list(table.class_of_value)  # the table's label values
    dtype = np.uint8 if 0 <= min(values) and max(values) <= 255 else np.int16  # noqa: SIM300
    image = nib.Nifti1Image(lookup.astype(dtype)[classes], affine)
    image.header.set_xyzt_units("mm")
    if path.name.endswith(".gz"):  # ISA-L level 1: ~10x faster than zlib's and smaller
        # mtime 0: the same volume gives the same bytes whenever it is written
        path.write_bytes(igzip.compress(image.to_bytes(), compresslevel=1, mtime=0))
    else:
        nib.save(image, path)
