"""The tfds builders on synthetic Pix3D and OmniObject3D, with planted bad files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from data_fixtures import OMNI_OBJECTS, PIX3D_MODELS, PIX3D_VIEWS

from data_pipelines.builders.base import PrepareError, split_by_shape
from data_pipelines.prepare import main as prepare_main
from data_pipelines.prepare import prepare


@pytest.mark.parametrize("dataset", ["pix3d", "omniobject3d"])
def test_bad_files_are_skipped_and_counted(prepared, dataset):
    report = prepared["reports"][dataset]
    assert report["skipped"] == prepared["expected"][dataset]
    total = PIX3D_MODELS * PIX3D_VIEWS if dataset == "pix3d" else OMNI_OBJECTS
    assert sum(report["written"].values()) == total - sum(report["skipped"].values())
    saved = json.load(open(os.path.join(report["data_dir"], "prepare_report.json")))
    assert saved["skipped"] == report["skipped"]


def test_strict_stops_at_the_first_bad_file_and_writes_nothing(prepared, tmp_path):
    with pytest.raises(PrepareError, match="corrupt image|missing image|mask size|mesh|NaN"):
        prepare("pix3d", prepared["raw"]["pix3d"], str(tmp_path), config="tiny",
                num_workers=1, strict=True, log=lambda m: None)  # fmt: skip
    written = [f for _, _, files in os.walk(tmp_path) for f in files]
    assert not any(f.endswith(".array_record") or f == "dataset_info.json" for f in written)


def test_cli_prints_the_report_and_fails_cleanly(prepared, tmp_path, capsys):
    args = ["--dataset=omniobject3d", f"--manual_dir={prepared['raw']['omniobject3d']}",
            f"--data_dir={prepared['data_dir']}", "--config=tiny"]  # fmt: skip
    assert prepare_main(args) == 0  # already prepared: reports, does not rebuild
    out = capsys.readouterr().out
    assert "already prepared" in out and "wrote 3 examples" in out
    assert prepare_main(["--dataset=pix3d", f"--manual_dir={tmp_path}/nope",
                         f"--data_dir={tmp_path}"]) == 1  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_split_by_shape_is_deterministic_and_disjoint():
    ids = [f"model/chair/M{i}" for i in range(20)]
    test = split_by_shape(ids, 0.1)
    assert len(test) == 2 and test == split_by_shape(list(reversed(ids)), 0.1)
    assert split_by_shape(ids[:2], 0.1) and len(split_by_shape(ids[:2], 0.1)) == 1
    assert split_by_shape(ids, 0.0) == set()


def test_user_split_file(prepared, tmp_path):
    source = prepared["raw"]["omniobject3d"]
    objects = sorted(f"{c}/{o}" for c in os.listdir(f"{source}/raw_scans")
                     for o in os.listdir(f"{source}/raw_scans/{c}"))  # fmt: skip
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": objects[2:4], "val": objects[4:]}))
    report = prepare("omniobject3d", source, str(tmp_path / "tfds"), config="tiny",
                     num_workers=1, split_file=str(split), log=lambda m: None)  # fmt: skip
    assert report["written"] == {"train": 2, "val": len(objects) - 4}


def test_prepared_fields(prepared):
    from data_pipelines.loader import data_source

    for dataset in ("pix3d", "omniobject3d"):
        train = data_source(prepared["data_dir"], dataset, "train", config="tiny")
        test = data_source(prepared["data_dir"], dataset, "test", config="tiny")
        shapes = lambda src: {src[i]["shape_id"] for i in range(len(src))}  # noqa: E731
        assert len(test) >= 1 and not shapes(train) & shapes(test)
        ex = train[0]
        assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
        assert ex["mask"].shape == (64, 64, 1) and set(np.unique(ex["mask"])) <= {0, 1}
        assert ex["caption"].decode() == f"a photo of a {ex['category'].decode()}"
        assert ex["points"].shape == ex["normals"].shape == ex["colors"].shape == (256, 3)
        assert ex["sdf_points"].shape == (384, 3) and ex["sdf_values"].shape == (384,)
        np.testing.assert_allclose(np.linalg.norm(ex["normals"], axis=1), 1.0, atol=1e-4)
        # the unit cube: bounding box centred, longest side 1
        lo, hi = ex["points"].min(0), ex["points"].max(0)
        assert np.abs(lo + hi).max() < 0.05 and abs((hi - lo).max() - 1.0) < 0.05
        # near-surface queries are close to the surface, inside ones negative
        near = ex["sdf_values"][:256]
        assert np.abs(near).max() < 0.3 and (ex["sdf_values"] < 0).any()
        assert ex["camera"]["c2w"].shape == (4, 4)
        # the condition mesh: at most the tiny config's 512 faces, in the same unit cube,
        # coloured like the surface samples
        v, f, c = ex["mesh_vertices"], ex["mesh_faces"], ex["mesh_colors"]
        assert 0 < len(f) <= 512 and f.dtype == np.int32 and f.max() < len(v) == len(c)
        assert np.abs(v).max() <= 0.5 + 1e-3 and 0 <= c.min() and c.max() <= 1
        assert np.abs(c.mean(0) - ex["colors"].mean(0)).max() < 0.15
        if dataset == "omniobject3d":
            assert ex["views"].shape == (64, 64, 3)
            assert ex["view_cameras"]["c2w"].shape == (4, 4, 4)
            assert ex["view_cameras"]["focal"].shape == (4,)
