"""What `generate` writes for one object, into a folder that appears whole or not at all:

mesh.glb                glTF 2.0: Y-up, PBR baseColorTexture, TEXCOORD_0, NORMAL (first)
mesh.obj/.mtl/.png      the same mesh as OBJ + MTL + texture
views.png               the K generated views (the model's grid)
preview.png             the sheet: input | coarse | refined | conditions N, T_hat;
                        the K generated views; the textured mesh from 8 azimuths
                        (`output.preview`, default on)
turntable.gif           the textured mesh turning once (`output.turntable_frames`: 0 or a
                        multiple of 8)
summary.json            the input, seconds per stage, mesh and texture stats, fidelity
                        (refined vs coarse, texture coverage), settings (last)

The web demo writes the folder without the renders first (the viewer needs only the GLB) and
adds them with `add_previews`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import pinhole, ring_poses
from nd3d_jax.render.maps import grid_layout, to_uint8
from nd3d_jax.render.preview import render_preview
from nd3d_jax.texture import export_glb, export_obj
from nd3d_jax.texture.views import render_textured

PREVIEW_FOV = 0.8
SUMMARY = "summary.json"


def is_done(folder: str) -> bool:
    """An object is done when its folder holds its summary (written last)."""
    return os.path.isfile(os.path.join(folder, SUMMARY))


def turntable(mesh, size: int, frames: int, elevation_deg: float = 20.0) -> np.ndarray:
    """(frames, size, size, 3) uint8 renders of the textured mesh on a ring (+Y up), by
    `texture.views.render_textured` (bucket-padded: meshes of similar size share a program)."""
    v = np.asarray(mesh.vertices, np.float32)
    radius = float(np.linalg.norm(v, axis=1).max()) / math.sin(PREVIEW_FOV / 2) * 1.05
    poses = ring_poses(frames, radius, math.radians(elevation_deg), up_axis=1)
    return render_textured(mesh, pinhole(poses, size, size, fov=PREVIEW_FOV), "turntable")


def _label(image: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(image)
    ImageDraw.Draw(im).text((4, 2), text, fill=(0, 0, 0))
    return np.asarray(im)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size)))


def preview_sheet(result, size: int, spins: np.ndarray) -> np.ndarray:
    """The sheet as uint8: three rows of `size`-px cells, eight cells wide."""
    k = len(result.views)
    first = [
        _label(_fit(result.image, size), "input"),
        _label(render_preview(result.coarse, size, 1, "shaded", up="y"), "coarse (P1)"),
        _label(render_preview(result.refined, size, 1, "normal", up="y"), "refined (P2)"),
        _label(_fit(to_uint8(result.normals[0]), size), "N, view 1"),
        _label(_fit(to_uint8(result.t_hat[0]), size), "T_hat, view 1"),
    ]
    views = [_label(_fit(to_uint8(v), size), f"view {i + 1}") for i, v in enumerate(result.views)]
    spin = [_fit(s, size) for s in spins]
    spin[0] = _label(spin[0], "textured")
    width = max(8, k, len(first), len(spin))
    white = np.full((size, size, 3), 255, np.uint8)
    rows = [r + [white] * (width - len(r)) for r in (first, views, spin)]
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


def summary(result, config) -> dict:
    mesh = result.mesh
    return {
        "name": result.name,
        "input": {
            "image": result.input.image,
            "text": result.input.text,
            "coarse_mesh": result.input.coarse_mesh,
        },  # fmt: skip
        "seconds": {k: round(v, 4) for k, v in result.seconds.items()},
        "seconds_total": round(sum(result.seconds.values()), 4),
        "refine_loss": {"first": result.refine_loss[0], "last": result.refine_loss[1]},
        "coarse": {"vertices": len(result.coarse.vertices), "faces": len(result.coarse.faces)},
        "refined": {
            "vertices": len(result.refined.vertices),
            "faces": len(result.refined.faces),
            "watertight": bool(result.refined.is_watertight),
        },  # fmt: skip
        "textured": {
            "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
            "texture_size": int(result.texture.shape[0]),
            "coverage": round(result.coverage, 4),
        },  # fmt: skip
        # refined vs coarse in the unit frame (metrics.fidelity), texture coverage (bake)
        "fidelity": {
            k: (float(f"{v:.4g}") if isinstance(v, float) else v)
            for k, v in result.fidelity.items()
        },  # fmt: skip
        "settings": config.to_dict() if hasattr(config, "to_dict") else dict(config),
    }


def fidelity_line(fidelity: dict) -> str:
    """One line for logs and the web demo's status: pieces, F1@{0.005, 0.01, 0.02},
    Chamfer-L2, texture coverage."""
    if not fidelity:
        return ""
    f1 = "/".join(f"{fidelity[f'f1@{t}']:.3f}" for t in ("0.005", "0.01", "0.02"))
    return (
        f"refined vs coarse: {fidelity['pieces_coarse']} -> {fidelity['pieces_refined']} "
        f"pieces, F1@0.005/0.01/0.02 {f1}, Chamfer-L2 {fidelity['chamfer_l2']:.2g}; "
        f"texture painted {fidelity['texture_painted']:.0%} "
        f"({fidelity['texture_visible_painted']:.0%} of what the views see)"
    )


def write_result(result, folder: str, config, previews: bool = True) -> dict[str, str]:
    """Writes every file of one object into `folder` (through `folder.partial`, renamed when
    complete, so a crash leaves no half-written object); returns {kind: path}. `previews`:
    also the preview sheet and turntable the config asks for (else `add_previews` later)."""
    o = config.output
    if o.turntable_frames < 0 or o.turntable_frames % 8:
        raise UserError(f"output.turntable_frames={o.turntable_frames}: use 0 or a multiple of 8")
    tmp = folder.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_files(result, tmp, config, previews)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.rstrip("/") + ".old"
    if os.path.isdir(folder):  # the previous result stays whole until the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))}


def _write_files(result, tmp: str, config, previews: bool) -> None:
    export_glb(result.mesh, os.path.join(tmp, "mesh.glb"), up="y")
    export_obj(result.mesh, tmp, name="mesh")
    k = len(result.views)
    rows = int(math.isqrt(k)) if math.isqrt(k) ** 2 == k else 1
    Image.fromarray(to_uint8(grid_layout(np.asarray(result.views), rows))).save(
        os.path.join(tmp, "views.png"), compress_level=1
    )
    if previews:
        _write_previews(result, tmp, config)
    with open(os.path.join(tmp, SUMMARY), "w") as f:
        json.dump(summary(result, config), f, indent=2)


def _write_previews(result, folder: str, config) -> list[str]:
    """preview.png and turntable.gif as `config.output` asks (each written whole, then
    renamed into place); returns the names written."""
    o = config.output
    want_sheet = bool(o.get("preview", True))
    if not want_sheet and o.turntable_frames == 0:
        return []
    # one ring of renders: every (frames / 8)-th for the sheet, all of them for the GIF
    count = max(8, o.turntable_frames)
    frames = turntable(result.mesh, o.preview_size, count)
    written = []
    if want_sheet:
        sheet = Image.fromarray(preview_sheet(result, o.preview_size, frames[:: count // 8]))
        _save_whole(lambda path: sheet.save(path, format="PNG", compress_level=1), folder,
                    "preview.png")  # fmt: skip
        written.append("preview.png")
    if o.turntable_frames > 0:
        images = [Image.fromarray(f) for f in frames]
        _save_whole(lambda path: images[0].save(path, format="GIF", save_all=True,
                                                append_images=images[1:], duration=80,
                                                loop=0), folder, "turntable.gif")  # fmt: skip
        written.append("turntable.gif")
    return written


def _save_whole(save: Callable[[str], None], folder: str, name: str) -> None:
    tmp = os.path.join(folder, f".{name}.partial")
    save(tmp)
    os.replace(tmp, os.path.join(folder, name))


def add_previews(result, folder: str, config) -> dict[str, str]:
    """The preview sheet and turntable of a folder `write_result(previews=False)` wrote."""
    _write_previews(result, folder, config)
    return {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))}
