"""OmniObject3D (Wu et al. 2023) from its manual download: one example per object.

The manual folder holds `raw_scans/<cat>/<obj>/Scan/Scan.obj` (textured scans) and
`blender_renders/<cat>/<obj>/render/{images/r_<i>.png, transforms.json}`. The input image is
one render (`Spec.input_view`); the K-view grid tiles K other renders spread over the rest,
each with its camera. Cameras move from Blender's world (imported, scaled scan) to the scan's
unit-cube frame, the same frame as Pix3D's models. Colours are sampled from the scan texture.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from data_pipelines.builders.base import PreparedBuilder, PrepareError, camera_features
from data_pipelines.examples import prepare_omniobject3d


class Omniobject3d(PreparedBuilder):
    """Input render, mask, camera, caption, K-view grid with cameras and shape samples."""

    name = "omniobject3d"
    example_job = staticmethod(prepare_omniobject3d)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download OmniObject3D's raw_scans and blender_renders (https://omniobject3d.github.io/)"
        ", extract them into one folder and pass it as --manual_dir."
    )

    def extra_features(self) -> dict:
        spec = self.builder_config.spec
        k = spec.grid_rows * spec.grid_cols
        return {
            "views": tfds.features.Image(
                shape=(spec.image_size, spec.image_size, 3), encoding_format="png"
            ),  # fmt: skip
            "view_cameras": camera_features((k,)),
        }

    def index(self, root: str):
        scans = os.path.join(root, "raw_scans")
        if not os.path.isdir(scans):
            raise PrepareError(f"{scans} not found: is {root} the OmniObject3D folder?")
        items, shapes = [], {}
        for category in sorted(os.listdir(scans)):
            if not os.path.isdir(os.path.join(scans, category)):
                continue
            for obj in sorted(os.listdir(os.path.join(scans, category))):
                key = f"{category}/{obj}"
                shapes[key] = os.path.join(scans, category, obj, "Scan", "Scan.obj")
                render_dir = os.path.join(root, "blender_renders", category, obj, "render")
                items.append({"key": key, "shape_id": key, "category": category,
                              "render_dir": render_dir})  # fmt: skip
        return items, shapes
