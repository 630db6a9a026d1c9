"""OmniObject3D as it is downloaded (tarballs, batch_untar.sh, strays, missing textures, RGB
renders, both `file_path` forms), grid views nearest the generation ring, and the Beam path."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil

import numpy as np
import pytest
import trimesh
from PIL import Image

from data_pipelines.builders.base import TINY
from data_pipelines.builders.omniobject3d import find_root
from data_pipelines.examples import NO_ALPHA, TEXTURE_NOT_LOADED
from data_pipelines.loader import data_source
from data_pipelines.prepare import prepare, summary
from data_pipelines.synthetic.omniobject3d import pack_download, write_object

QUIET = lambda msg: None  # noqa: E731
# chair: tarballs holding <cat>/<obj>, not unpacked; desk: holding <obj>, unpacked by
# batch_untar.sh (desk/desk_001); misc: holding <cat>/<obj>, unpacked (misc/misc/misc_001)
NESTED, UNTARRED = ("chair", "misc"), ("desk", "misc")


def _objects(src: str) -> dict[str, str]:
    """Three small objects, each with one of the real data's quirks."""
    made = {
        "chair": write_object(
            src, "chair", 1, seed=11, num_views=6, image_size=48, file_path="absolute"
        ),  # fmt: skip
        "desk": write_object(src, "desk", 1, seed=12, num_views=6, image_size=48),
        "misc": write_object(src, "misc", 1, seed=13, num_views=6, image_size=48),
    }
    os.remove(os.path.join(src, "raw_scans", "desk", made["desk"], "Scan", "Scan.jpg"))
    images = os.path.join(src, "blender_renders", "misc", made["misc"], "render", "images")
    for name in os.listdir(images):  # Blender's color_mode='RGB': alpha dropped, black behind
        path = os.path.join(images, name)
        shutil.copy(path, path + ".rgba")
        Image.open(path).convert("RGB").save(path)
    return made


def _strays(raw: str) -> None:
    for rel in (".DS_Store", "raw_scans/.DS_Store", "raw_scans/README.md",
                "raw_scans/desk/.DS_Store", "raw_scans/desk/desk_002.tar.gz",
                "blender_renders/misc/misc/.DS_Store", "blender_renders/notes.txt"):  # fmt: skip
        with open(os.path.join(raw, rel), "w") as f:
            f.write("not an object\n")


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    """The three objects packed as the download comes, prepared (strict: no example fails)."""
    base = tmp_path_factory.mktemp("omni_download")
    src = str(base / "src")
    made = _objects(src)
    # the .rgba copies keep the renders' true alpha for the test, outside the download
    keep = str(base / "rgba")
    shutil.copytree(os.path.join(src, "blender_renders", "misc"), keep)
    for root, _, files in os.walk(os.path.join(src, "blender_renders")):
        for name in files:
            if name.endswith(".rgba"):
                os.remove(os.path.join(root, name))
    root = pack_download(src, str(base / "OpenXD-OmniObject3D-New"), nested=NESTED,
                         untarred=UNTARRED)  # fmt: skip
    _strays(os.path.join(root, "raw"))
    report = prepare("omniobject3d", root, str(base / "tfds"), config="tiny", num_workers=1,
                     strict=True, log=QUIET)  # fmt: skip
    return {"root": root, "report": report, "made": made, "rgba": keep, "base": base,
            "data_dir": str(base / "tfds")}  # fmt: skip


def _examples(data_dir: str) -> dict[str, dict]:
    out = {}
    for split in ("train", "test"):
        source = data_source(data_dir, "omniobject3d", split, config="tiny")
        out.update({source[i]["key"].decode(): source[i] for i in range(len(source))})
    return out


def test_download_as_it_comes(download):
    report = download["report"]
    # every object written: tarballs unpacked, either nesting, old and new file_path forms;
    # strays are not objects, not failures, and did not stop --strict
    assert sum(report["written"].values()) == 3 and report["skipped"] == {}
    examples = _examples(download["data_dir"])
    assert sorted(examples) == sorted(f"{c}/{o}" for c, o in download["made"].items())
    # the scan without Scan.jpg and the RGB renders: counted once per shape, and printed
    shapes = report["shapes"]
    assert shapes["prepared"] == 3 and shapes[TEXTURE_NOT_LOADED] == 1 and shapes[NO_ALPHA] == 1
    text = summary(report)
    assert f"{TEXTURE_NOT_LOADED}: 1" in text and f"{NO_ALPHA}: 1" in text
    # one plain colour where the texture did not load, the texture's colours elsewhere
    desk = examples[f"desk/{download['made']['desk']}"]
    assert desk["colors"].std(0).max() < 1e-6
    chair = examples[f"chair/{download['made']['chair']}"]
    assert chair["colors"].std(0).max() > 0.02
    # the RGB render's mask comes from the background colour: as the true alpha would give
    misc = examples[f"misc/{download['made']['misc']}"]
    rgba = Image.open(os.path.join(download["rgba"], download["made"]["misc"], "render",
                                   "images", "r_0.png.rgba"))  # fmt: skip
    truth = np.asarray(rgba.getchannel("A").resize((64, 64), Image.BILINEAR)) > 127
    mask = misc["mask"][..., 0] > 0
    assert (mask & truth).sum() / (mask | truth).sum() > 0.85
    background = misc["image"][~mask & ~truth].astype(float)  # on white, as alpha composites
    assert background.mean() > 250 and np.median(background) == 255


def test_prepared_data_keeps_its_views(download):
    """Preparing again reuses the data set and reports the grid views it holds; asking for
    other views without --overwrite is refused (nothing is silently mixed)."""
    from nd3d_jax.errors import UserError

    args = ("omniobject3d", download["root"], download["data_dir"])
    again = prepare(*args, config="tiny", num_workers=1, log=QUIET)
    assert again["already_prepared"] and again["written"] == download["report"]["written"]
    assert (again["view_selection"], again["view_seed"]) == ("ring", 0)
    for flags in ({"view_selection": "frames"}, {"view_seed": 3}):
        with pytest.raises(UserError, match=r"prepared with --view_\w+=(ring|0): add --overwrite"):
            prepare(*args, config="tiny", log=QUIET, **flags)
    with pytest.raises(UserError, match="--beam_options=.*No closing quotation"):
        prepare(*args, config="tiny", log=QUIET, beam_options="--project='x")


def test_manual_dir_forms(download, tmp_path):
    raw = os.path.join(download["root"], "raw")
    assert find_root(download["root"]) == raw and find_root(raw) == raw
    from data_pipelines.builders.base import PrepareError

    with pytest.raises(PrepareError, match="no raw_scans/ in it or in its raw/"):
        find_root(str(tmp_path))


def test_grid_views_are_the_ones_nearest_the_ring(tmp_path):
    """24 upper-hemisphere renders: the 4 grid views are, by exhaustive search, the distinct
    non-input renders with the least summed angle to the object's turned ring (20 degrees up,
    90 degrees apart), in the unit-cube frame computed here from the files."""
    from data_pipelines.examples import prepare_omniobject3d, prepare_shape
    from data_pipelines.grid_views import azimuth_offset, frame_views

    name = write_object(str(tmp_path), "chair", 2, seed=7, num_views=24, image_size=48)
    key = f"chair/{name}"
    scan = os.path.join(tmp_path, "raw_scans", "chair", name, "Scan", "Scan.obj")
    render = os.path.join(tmp_path, "blender_renders", "chair", name, "render")
    status, _, shape = prepare_shape((key, scan, TINY))
    item = {"key": key, "shape_id": key, "category": "chair", "render_dir": render}
    status2, _, example = prepare_omniobject3d((item, shape, TINY))
    assert status == status2 == "ok"

    # the cameras by hand: Blender world / scale -> OBJ (x, z, -y) -> unit cube
    frames = json.load(open(os.path.join(render, "transforms.json")))["frames"]
    vertices = trimesh.load(scan, force="mesh", process=False).vertices
    lo, hi = vertices.min(0), vertices.max(0)
    world = np.array([np.asarray(f["transform_matrix"])[:3, 3] / f["scale"] for f in frames])
    assert (world[:, 2] > 0).all()  # the upper hemisphere
    unit = (world[:, [0, 2, 1]] * [1, 1, -1] - (lo + hi) / 2) / (hi - lo).max()
    dirs = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    offset = math.radians(azimuth_offset(key, TINY.view_seed, TINY.view_azimuth_jitter_deg))
    el, az = math.radians(20.0), offset + np.arange(4) * math.pi / 2
    ring = np.stack([np.sin(az) * math.cos(el), np.full(4, math.sin(el)),
                     np.cos(az) * math.cos(el)], 1)  # fmt: skip
    angle = np.arccos(np.clip(ring @ dirs.T, -1, 1))  # (4, 24)
    perms = np.array(list(itertools.permutations(range(1, 24), 4)))  # 212,520 assignments
    best = tuple(perms[np.argmin(angle[np.arange(4), perms].sum(1))])

    got = example["view_cameras"]["c2w"][:, :3, 3]
    chosen = [int(np.argmin(np.linalg.norm(unit - p, axis=1))) for p in got]
    np.testing.assert_allclose(unit[chosen], got, atol=1e-4)
    assert tuple(chosen) == best
    assert chosen != frame_views(24, 0, 4)  # the old choice differs on this object
    assert angle[[0, 1, 2, 3], chosen].max() < math.radians(45)


def test_azimuth_offset_is_seeded_per_object():
    from data_pipelines.grid_views import azimuth_offset

    a = [azimuth_offset(f"chair/chair_{i:03d}", 0, 45.0) for i in range(50)]
    assert a == [azimuth_offset(f"chair/chair_{i:03d}", 0, 45.0) for i in range(50)]
    assert min(a) >= -45.0 and max(a) < 45.0 and np.std(a) > 15.0
    assert a[0] != azimuth_offset("chair/chair_000", 1, 45.0)
    assert azimuth_offset("chair/chair_000", 0, 0.0) == 0.0


def test_beam_direct_runner_equals_the_pool(download):
    """The same download through tfds's Beam path (DirectRunner, 2 workers): the same
    examples under the same keys, the same report."""
    data_dir = str(download["base"] / "tfds_beam")
    report = prepare(
        "omniobject3d",
        download["root"],
        data_dir,
        config="tiny",
        strict=True,
        beam_runner="DirectRunner",
        log=QUIET,
        beam_options="--direct_num_workers=2 --direct_running_mode=multi_threading",
    )
    pool = download["report"]
    assert report["runner"] == "DirectRunner" and pool["runner"] == "process pool"
    assert report["written"] == pool["written"]
    assert report["skipped"] == pool["skipped"] and report["shapes"] == pool["shapes"]
    ours, theirs = _examples(data_dir), _examples(download["data_dir"])
    assert sorted(ours) == sorted(theirs)
    for key, ex in ours.items():
        a, b = _flat(ex), _flat(theirs[key])
        assert set(a) == set(b) and len(a) > 20
        for field, value in a.items():
            np.testing.assert_array_equal(value, b[field], err_msg=f"{key} {field}")


def _flat(example: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in example.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_beam_strict_stops_at_a_bad_example_and_writes_nothing(download):
    from data_pipelines.builders.base import PrepareError

    src, raw = download["base"] / "src", download["base"] / "bad"
    obj = download["made"]["chair"]
    for source in ("raw_scans", "blender_renders"):
        shutil.copytree(src / source / "chair" / obj, raw / source / "chair" / obj)
    (raw / "blender_renders" / "chair" / obj / "render" / "images" / "r_0.png").write_bytes(b"x")
    out = download["base"] / "tfds_bad"
    with pytest.raises(PrepareError, match=r"r_0.png: corrupt image"):
        prepare("omniobject3d", str(raw), str(out), config="tiny", strict=True,
                beam_runner="DirectRunner", log=QUIET)  # fmt: skip
    written = [f for _, _, files in os.walk(out) for f in files]
    assert not any(f.endswith(".array_record") or f == "dataset_info.json" for f in written)
