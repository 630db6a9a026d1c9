"""The tfds builders on synthetic Pix3D and OmniObject3D, with planted bad files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import trimesh
from data_fixtures import OMNI_OBJECTS, PIX3D_MODELS, PIX3D_VIEWS, SHEET_MODEL

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
                         f"--data_dir={tmp_path}"]) == 2  # fmt: skip
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


def test_faulty_meshes_are_repaired_counted_or_skipped(prepared):
    """Inward, mixed, open and duplicated faces (data_fixtures.PIX3D_FAULTS, OMNI_FAULTS) are
    repaired and counted per shape; the open sheet is skipped for its inside fraction."""
    from data_pipelines.loader import data_source

    pix3d = prepared["reports"]["pix3d"]["shapes"]
    assert pix3d["prepared"] == PIX3D_MODELS - 2  # two meshes do not load
    assert pix3d["orientation repaired"] == 2  # the mixed and the inward-facing model
    assert pix3d["duplicate faces removed"] == 1
    assert pix3d["open mesh (outward side by ray casting)"] == 2  # holes, and the sheet
    assert pix3d["implausible inside fraction, skipped"] == 1
    omni = prepared["reports"]["omniobject3d"]["shapes"]
    assert omni["prepared"] == OMNI_OBJECTS and omni["orientation repaired"] == 2
    assert (
        omni["duplicate faces removed"] == 1 and "implausible inside fraction, skipped" not in omni
    )
    for dataset in ("pix3d", "omniobject3d"):
        for split in ("train", "test"):
            source = data_source(prepared["data_dir"], dataset, split, config="tiny")
            for i in range(len(source)):
                ex = source[i]
                near_sdf = ex["sdf_values"][:256]
                assert 0.05 < (near_sdf < 0).mean() < 0.95  # was 0 for inward-facing models
                # the condition mesh (normal maps, MeshConv) faces outward, and the surface
                # samples' normals are those of its faces under them (but where two parts
                # touch face to face, as the desk's drawer block and top)
                mesh = trimesh.Trimesh(ex["mesh_vertices"], ex["mesh_faces"], process=False)
                assert mesh.volume > 0
                _, _, face = trimesh.proximity.closest_point(mesh, ex["points"])
                agree = np.einsum("ij,ij->i", mesh.face_normals[face], ex["normals"]) > 0.5
                assert agree.mean() > 0.9


def test_keep_implausible_keeps_the_sheet_with_a_warning(prepared, tmp_path, capsys):
    raw = prepared["raw"]["pix3d"]
    sheet = sorted({e["model"] for e in json.load(open(os.path.join(raw, "pix3d.json")))})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [sheet[SHEET_MODEL]]}))
    logs = []
    report = prepare("pix3d", raw, str(tmp_path / "tfds"), config="tiny", num_workers=1,
                     split_file=str(split), keep_implausible=True, log=logs.append)  # fmt: skip
    assert report["written"] == {"train": PIX3D_VIEWS} and report["skipped"] == {}
    assert report["shapes"]["implausible inside fraction, kept"] == 1
    assert any("kept with 0.0% of the near-surface SDF queries inside" in m for m in logs)
    # not a terminal: plain progress lines, no tfds download banner, no escape codes
    assert "train shapes: 1/1" in logs and f"train examples: {PIX3D_VIEWS}/{PIX3D_VIEWS}" in logs
    out, err = capsys.readouterr()
    assert "Downloading and preparing" not in out and "downloaded and prepared" not in out
    assert not any(c in out + err + "".join(logs) for c in "\x1b\r")


def test_export_examples_writes_generate_inputs(prepared, tmp_path):
    """Prepared test examples -> `generate` inputs (make demo): photo, caption, mesh."""
    from PIL import Image

    from data_pipelines.export_examples import export_examples
    from data_pipelines.loader import data_source
    from nd3d_jax.errors import UserError
    from nd3d_jax.pipeline.inputs import ObjectInput, read_jsonl

    path = export_examples(prepared["data_dir"], "omniobject3d", "tiny", "test", 1,
                           str(tmp_path))  # fmt: skip
    rows = read_jsonl(path)
    assert len(rows) == 1 and isinstance(rows[0], ObjectInput)
    ex = data_source(prepared["data_dir"], "omniobject3d", "test", "tiny")[0]
    assert rows[0].text == ex["caption"].decode()
    np.testing.assert_array_equal(np.asarray(Image.open(rows[0].image)), ex["image"])
    mesh = trimesh.load(rows[0].coarse_mesh, process=False)
    np.testing.assert_allclose(mesh.vertices, ex["mesh_vertices"], atol=1e-6)
    np.testing.assert_array_equal(mesh.faces, ex["mesh_faces"])
    np.testing.assert_allclose(mesh.visual.vertex_colors[:, :3] / 255, ex["mesh_colors"],
                               atol=0.5 / 255 + 1e-6)  # fmt: skip
    with pytest.raises(UserError, match="shapes, not 99"):
        export_examples(prepared["data_dir"], "omniobject3d", "tiny", "test", 99, str(tmp_path))
