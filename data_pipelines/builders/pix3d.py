"""Pix3D (Sun et al. 2018) from its manual download: one example per annotated image.

The manual folder is the unzipped `pix3d.zip`: `pix3d.json`, `img/`, `mask/`, `model/`. The
pose is read from `rot_mat`, `trans_mat` and `focal_length` (what the dataset's own `demo.py`
renders with; `data_pipelines.cameras` has the convention), moved to the unit-cube frame of
the model.
"""

from __future__ import annotations

import json
import os

from data_pipelines.builders.base import PreparedBuilder, PrepareError
from data_pipelines.examples import prepare_pix3d

REQUIRED = ("img", "mask", "model", "category")


class Pix3d(PreparedBuilder):
    """Image, mask, camera, caption and shape samples per Pix3D image."""

    name = "pix3d"
    example_job = staticmethod(prepare_pix3d)
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download pix3d.zip from http://pix3d.csail.mit.edu/, unzip it and pass the folder "
        "holding pix3d.json as --manual_dir."
    )

    def index(self, root: str):
        path = os.path.join(root, "pix3d.json")
        try:
            with open(path) as f:
                entries = json.load(f)
        except FileNotFoundError as e:
            raise PrepareError(f"{path} not found: is {root} the unzipped Pix3D folder?") from e
        except ValueError as e:
            raise PrepareError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(entries, list):
            raise PrepareError(f"{path}: expected a list of annotations")
        items, shapes, seen = [], {}, set()
        for i, entry in enumerate(entries):
            missing = [k for k in REQUIRED if not isinstance(entry, dict)
                       or not isinstance(entry.get(k), str)]  # fmt: skip
            if missing:
                self.skip("bad annotation", f"{path} [entry {i}]", f"missing {missing}")
                continue
            if entry["img"] in seen:
                self.skip("duplicate entry", f"{path} [{entry['img']}]")
                continue
            seen.add(entry["img"])
            shapes[entry["model"]] = os.path.join(root, entry["model"])
            items.append({"key": entry["img"], "shape_id": entry["model"], "root": root,
                          "entry": entry})  # fmt: skip
        return items, shapes
