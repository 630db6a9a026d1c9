"""grain loaders over the prepared synthetic data sets (fixture `prepared` from test_prepare)."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from data_pipelines.loader import (
    _PROBE_FILTER,
    data_source,
    flip_example,
    make_iterator,
    silence_variant_probe,
    to_model_inputs,
)
from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import Camera, project

DATASETS = ("pix3d", "omniobject3d")


def _source(prepared, dataset, split="train"):
    return data_source(prepared["data_dir"], dataset, split, config="tiny")


def _coverage(mask: np.ndarray, c2w, focal, principal, points) -> float:
    """Share of surface points whose projection lands on the object's pixels (grown by one
    pixel: at 64 px, thin parts lose pixels to resampling)."""
    mask = binary_dilation(mask)
    size = mask.shape[0]
    cam = Camera(jnp.asarray(c2w), jnp.asarray(focal), jnp.asarray(principal), size, size)
    uv, depth = project(cam, jnp.asarray(points))
    uv, depth = np.asarray(uv), np.asarray(depth)
    ij = np.floor(uv).astype(int)
    inside = (ij >= 0).all(1) & (ij < size).all(1) & (depth > 0)
    hit = np.zeros(len(points), bool)
    hit[inside] = mask[ij[inside, 1], ij[inside, 0]]
    return float(hit.mean())


def _object_pixels(image: np.ndarray) -> np.ndarray:
    return (image < 245).any(-1)  # renders are composited on white


def _check_geometry(ex: dict) -> None:
    """Cameras, image and shape agree: every surface point projects onto the silhouette."""
    cov = _coverage(ex["mask"][..., 0] > 0.5, ex["camera/c2w"], ex["camera/focal"],
                    ex["camera/principal"], ex["points"])  # fmt: skip
    assert cov > 0.99, cov
    if "views" in ex:
        tile = ex["views"].shape[1] // 2
        obj = _object_pixels(ex["views"])
        for k in range(4):
            r, c = divmod(k, 2)
            cov = _coverage(obj[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile],
                            ex["view_cameras/c2w"][k], ex["view_cameras/focal"][k],
                            ex["view_cameras/principal"][k], ex["points"])  # fmt: skip
            assert cov > 0.99, (k, cov)


def _face_normals(e):
    t = e["mesh_vertices"][e["mesh_faces"][: int(e["mesh_num_faces"])]]
    return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])


@pytest.mark.parametrize("dataset", DATASETS)
def test_cameras_match_images_and_flips_stay_consistent(prepared, dataset):
    source = _source(prepared, dataset)
    for i in range(len(source)):
        ex = to_model_inputs(source[i])
        _check_geometry(ex)
        flipped = flip_example(ex)
        _check_geometry(flipped)
        np.testing.assert_array_equal(flipped["image"], ex["image"][:, ::-1])
        np.testing.assert_array_equal(flipped["points"][:, 1:], ex["points"][:, 1:])
        np.testing.assert_array_equal(flipped["points"][:, 0], -ex["points"][:, 0])
        np.testing.assert_array_equal(flipped["sdf_values"], ex["sdf_values"])
        meshed = to_model_inputs(source[i], max_faces=512)
        mirrored = flip_example(meshed)
        np.testing.assert_array_equal(
            mirrored["mesh_vertices"][:, 0], -meshed["mesh_vertices"][:, 0]
        )
        # the mirrored mesh keeps outward normals: its normals are the mirrored normals
        np.testing.assert_allclose(
            _face_normals(mirrored), _face_normals(meshed) * [-1, 1, 1], atol=1e-6
        )
        back = flip_example(flipped)
        for key, value in ex.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(back[key], value, err_msg=key)


@pytest.mark.parametrize("dataset", DATASETS)
def test_batches_fields_and_raw_images(prepared, dataset):
    source = _source(prepared, dataset)
    it = make_iterator(source, batch_size=2, train=False, shard_index=0, shard_count=1,
                       num_threads=1)  # fmt: skip
    batch = next(it)
    assert batch["image"].shape == (2, 64, 64, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (2, 64, 64, 1) and batch["mask"].dtype == np.float32
    assert batch["camera/c2w"].shape == (2, 4, 4) and batch["camera/focal"].shape == (2,)
    assert batch["camera/principal"].shape == (2, 2)
    assert batch["points"].shape == (2, 256, 3) and batch["sdf_values"].shape == (2, 384)
    assert batch["caption"].shape == (2,) and batch["caption"][0].startswith("a photo of a ")
    assert not batch["flipped"].any()  # evaluation never flips
    if dataset == "omniobject3d":
        assert batch["views"].shape == (2, 64, 64, 3) and batch["views"].dtype == np.uint8
        np.testing.assert_array_equal(batch["views"][0], source[0]["views"])
        assert batch["view_cameras/c2w"].shape == (2, 4, 4, 4)
    assert "mesh_faces" not in batch  # only with max_faces
    meshed = next(make_iterator(source, batch_size=2, train=False, shard_index=0, shard_count=1,
                                num_threads=1, max_faces=512, num_sampled_faces=64))  # fmt: skip
    assert meshed["mesh_faces"].shape == (2, 512, 3) and meshed["mesh_vertices"].shape == (
        2,
        1536,
        3,
    )
    assert meshed["faces/features"].shape == (2, 64, 7)
    assert meshed["faces/neighbours"].shape == (2, 64, 3, 7)
    n = meshed["mesh_num_faces"]
    assert (meshed["mesh_face_mask"].sum(1) == n).all()
    assert (meshed["faces/face_mask"].sum(1) == np.minimum(n, 64)).all()
    # no normalisation (the model owns it): the prepared pixels, in the source order
    for i in range(2):
        np.testing.assert_array_equal(batch["image"][i], source[i]["image"])


def test_training_flips_some_and_is_deterministic(prepared):
    source = _source(prepared, "pix3d")
    kw = dict(batch_size=3, train=True, seed=7, shard_index=0, shard_count=1, num_threads=2)
    a = [next(it) for it in [make_iterator(source, **kw)] for _ in range(6)]
    b = [next(it) for it in [make_iterator(source, **kw)] for _ in range(6)]
    for x, y in zip(a, b, strict=True):
        assert list(x["key"]) == list(y["key"])
        np.testing.assert_array_equal(x["image"], y["image"])
    flips = np.concatenate([x["flipped"] for x in a])
    assert flips.any() and not flips.all()
    c = [next(it) for it in [make_iterator(source, **(kw | {"seed": 8}))] for _ in range(6)]
    assert [list(x["key"]) for x in a] != [list(x["key"]) for x in c]


def test_process_shards_are_disjoint_and_cover(prepared):
    source = _source(prepared, "pix3d")
    keys = []
    for index in range(2):
        it = make_iterator(source, batch_size=1, train=False, shard_index=index, shard_count=2,
                           num_threads=1)  # fmt: skip
        keys.append({str(b["key"][0]) for b in it})
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == {source[i]["key"].decode() for i in range(len(source))}


def test_iterator_resumes_at_the_same_batch(prepared):
    source = _source(prepared, "omniobject3d")
    kw = dict(batch_size=2, train=True, seed=1, shard_index=0, shard_count=1, num_threads=2)
    it = make_iterator(source, **kw)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = make_iterator(source, **kw)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert list(got["key"]) == list(want["key"])
        for key in ("image", "views", "points", "camera/c2w"):
            np.testing.assert_array_equal(got[key], want[key])


def test_bad_arguments(prepared):
    source = _source(prepared, "pix3d")
    with pytest.raises(ValueError, match="shard_index"):
        make_iterator(source, batch_size=2, train=True, shard_index=2, shard_count=2)
    with pytest.raises(UserError, match="no split"):
        _source(prepared, "pix3d", "validation")
    with pytest.raises(FileNotFoundError, match="data_pipelines.prepare"):
        data_source(prepared["data_dir"], "pix3d", config="default")


def test_training_batches_do_not_depend_on_the_process_count(prepared):
    """Two processes' per-process batches, concatenated, are the one-process global batch:
    same examples, order and flips."""
    source = _source(prepared, "omniobject3d")
    kw = dict(train=True, seed=3, num_threads=1, max_faces=512, num_sampled_faces=32)
    one = make_iterator(source, batch_size=4, shard_index=0, shard_count=1, **kw)
    two = [
        make_iterator(source, batch_size=2, shard_index=i, shard_count=2, **kw) for i in range(2)
    ]
    for _ in range(3):
        whole = next(one)
        parts = [next(it) for it in two]
        for key in ("key", "flipped", "image", "mesh_vertices", "faces/features"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_variant_probe_warning_is_silenced(tmp_path, caplog):
    """tfds' probe of a not-yet-written version folder (`builder.is_prepared()`, as `prepare`
    calls it) logs "Variant folder ... has no dataset_info.json": filtered, other warnings not."""
    from absl import logging as absl_logging
    from etils import epath
    from tensorflow_datasets.core.utils import file_utils

    silence_variant_probe()
    silence_variant_probe()  # idempotent: one filter
    assert sum(isinstance(f, type(_PROBE_FILTER)) for f in logging.getLogger("absl").filters) == 1
    with caplog.at_level(logging.WARNING):
        assert not file_utils.is_valid_variant_dir(epath.Path(tmp_path / "1.0.0"))
        absl_logging.warning("Variant folder %s has invalid version %s", "x", "y")
    messages = [r.getMessage() for r in caplog.records]
    assert not any("has no dataset_info.json" in m for m in messages), messages
    assert "Variant folder x has invalid version y" in messages
