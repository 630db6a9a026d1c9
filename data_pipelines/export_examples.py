"""Prepared examples -> `generate` inputs: each example's input photo (PNG), caption and
condition mesh (PLY with vertex colours, the unit-cube frame, +Y up), and an `inputs.jsonl`.

    python -m data_pipelines.export_examples --data_dir=out/demo/data/tfds \\
        --dataset=omniobject3d --config=tiny --split=test --count=4 --out=out/demo/held_out

`make demo` runs it on the held-out test split of the synthetic data, then generates textured
objects for these inputs with the trained demo model (the condition meshes stand in for
Shap-E, whose weights cannot be downloaded here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import trimesh
from PIL import Image

from nd3d_jax.errors import UserError


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def example_name(key) -> str:
    """The folder/file name of an example: its key with path separators made safe."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in _text(key))


def example_mesh(ex: dict) -> trimesh.Trimesh:
    """The example's mesh (the prepared condition mesh: unit-cube frame, +Y up) with its
    vertex colours."""
    colors = np.clip(np.asarray(ex["mesh_colors"], np.float32), 0, 1)
    return trimesh.Trimesh(
        np.asarray(ex["mesh_vertices"], np.float32),
        np.asarray(ex["mesh_faces"], np.int32),
        vertex_colors=np.concatenate(
            [np.round(colors * 255), np.full((len(colors), 1), 255)], 1
        ).astype(np.uint8),
        process=False,
    )


def shape_examples(data_dir: str, dataset: str, config: str, split: str, count: int):
    """The first example of each shape in the split, `count` of them (0: all), as
    (name, example); a `UserError` when the split has fewer shapes than `count`."""
    from data_pipelines.input_pipeline import open_source

    if count < 0:
        raise UserError(f"--count must be >= 0 (0: every shape), got {count}")
    source = open_source(data_dir, dataset, split, config)
    out, shapes = [], set()
    for i in range(len(source)):
        if count and len(out) == count:
            break
        ex = source[i]
        shape = _text(ex.get("shape_id", ex.get("key", i)))
        if shape not in shapes:
            shapes.add(shape)
            out.append((example_name(ex["key"]), ex))
    if count and len(out) < count:
        raise UserError(f"split {split!r} of {data_dir} has {len(out)} shapes, not {count}")
    return out


def export_examples(data_dir: str, dataset: str, config: str, split: str, count: int,
                    out: str, coarse_mesh: bool = True) -> str:  # fmt: skip
    """Writes the first `count` examples of the split (one per shape; 0: all) into `out`;
    returns the path of `out/inputs.jsonl`. `coarse_mesh=False` leaves the meshes out of the
    inputs (the objects then get their coarse shape from Shap-E)."""
    examples = shape_examples(data_dir, dataset, config, split, count)
    os.makedirs(out, exist_ok=True)
    rows = []
    for name, ex in examples:
        image_path = os.path.join(out, f"{name}.png")
        Image.fromarray(np.asarray(ex["image"], np.uint8)).save(image_path)
        row = {"name": name, "image": os.path.basename(image_path), "text": _text(ex["caption"])}
        if coarse_mesh:
            mesh_path = os.path.join(out, f"{name}.ply")
            example_mesh(ex).export(mesh_path)
            row["coarse_mesh"] = os.path.basename(mesh_path)
        rows.append(row)
    path = os.path.join(out, "inputs.jsonl")
    with open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_synthetic_inputs(folder: str, categories) -> list[dict]:
    """Generate inputs without a data set (tests, benchmarks): per category a procedural
    coloured object as the coarse mesh (PLY, +Y up) and an RGBA photo of a block of its colour;
    returns the `inputs.jsonl` rows (absolute paths)."""
    from data_pipelines.synthetic.shapes import make_object

    os.makedirs(folder, exist_ok=True)
    rows = []
    for i, cat in enumerate(categories):
        mesh = make_object(cat, i)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
        mesh_path = os.path.join(folder, f"{i}_{cat}.ply")
        mesh.export(mesh_path)
        rgba = np.zeros((40, 30, 4), np.uint8)
        rgba[8:32, 6:24] = [*mesh.visual.vertex_colors[0, :3], 255]
        image_path = os.path.join(folder, f"{i}_{cat}.png")
        Image.fromarray(rgba, "RGBA").save(image_path)
        rows.append({"name": f"{i}_{cat}", "image": image_path, "text": f"a {cat}",
                     "coarse_mesh": mesh_path})  # fmt: skip
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.export_examples",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--data_dir", required=True, help="the tfds folder of the prepared data")
    p.add_argument("--dataset", default="omniobject3d", choices=("omniobject3d", "pix3d"))
    p.add_argument("--config", default="default", help="the prepared config (tiny, default)")
    p.add_argument("--split", default="test")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        path = export_examples(a.data_dir, a.dataset, a.config, a.split, a.count, a.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(path)


if __name__ == "__main__":
    main()
