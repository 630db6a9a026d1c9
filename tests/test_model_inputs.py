"""Model inputs built in the grain pipeline (data_pipelines.model_inputs, .input_pipeline) and
the tiny tokenizer, over the prepared synthetic data sets (session fixture `prepared`)."""

from __future__ import annotations

import os
import threading

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from data_pipelines import input_pipeline, loader
from data_pipelines.model_inputs import ModelInputs, box_downsample, fit_tokens
from nd3d_jax.errors import UserError
from nd3d_jax.render.camera import Camera, project
from nd3d_jax.weights import CLIPTokenizer
from nd3d_jax.weights import tiny_tokenizer as tt

DATASETS = ("pix3d", "omniobject3d")
TILE = 16  # the prepared tiny grid tiles are 32 px and the photos 64 px: box factors 2 and 4


def _config(data_dir: str, dataset: str = "pix3d", **model) -> ml_collections.ConfigDict:
    m = dict(text_length=16, semantic_length=8, grid_rows=2, grid_cols=2, tile_size=TILE,
             num_sampled_faces=32, tokenizer_path="", clip=dict(path=""))  # fmt: skip
    m.update(model)
    return ml_collections.ConfigDict(dict(
        seed=0,
        data=dict(dataset=dataset, data_dir=data_dir, config_name="tiny", split="train",
                  batch_size=4, num_threads=2, max_faces=512, synthetic_objects=0,
                  cache_dir=""),
        model=m,
    ))  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return CLIPTokenizer(tt.write_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))), 77)


def _examples(prepared, dataset: str, transform: ModelInputs, flip: bool = False):
    """(loader example, its model inputs) for every training example, optionally flipped."""
    source = loader.data_source(prepared["data_dir"], dataset, "train", config="tiny")
    for i in range(len(source)):
        ex = loader.to_model_inputs(source[i], max_faces=512)
        if flip:
            ex = loader.flip_example(ex)
        ex = loader.mesh_conv_inputs(ex, 32)
        yield ex, transform.map(ex)


def _transform(tokenizer, **kw) -> ModelInputs:
    sizes = dict(text_length=16, semantic_length=8, grid_rows=2, grid_cols=2, tile_size=TILE)
    return ModelInputs(tokenizer, **(sizes | kw))


def _uv(c2w, focal, principal, size, points):
    cam = Camera(jnp.asarray(c2w), jnp.asarray(focal), jnp.asarray(principal), size, size)
    uv, depth = project(cam, jnp.asarray(points))
    assert (np.asarray(depth) > 0).all()
    return np.asarray(uv, np.float64)


# ------------------------------------------------------------------------- the pipeline
def test_both_datasets_yield_the_same_numeric_fields_tokenised_in_worker_threads(prepared):
    threads = set()
    original = ModelInputs.tokenize

    def tokenize(self, caption):
        threads.add(threading.current_thread().name)
        return original(self, caption)

    specs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ModelInputs, "tokenize", tokenize)
        for dataset in DATASETS:
            it = input_pipeline.train_iterator(_config(prepared["data_dir"], dataset), "unused",
                                               process_index=0, process_count=1)  # fmt: skip
            batch = next(it)
            specs[dataset] = {k: (v.shape, v.dtype) for k, v in batch.items()}
            assert batch["input_ids"][0, 0] == tt.BOS and (batch["input_ids"] < tt.VOCAB_SIZE).all()
    # tokenisation ran in grain's worker threads, not on the thread that calls next()
    assert threads and threading.current_thread().name not in threads
    assert specs["pix3d"] == specs["omniobject3d"]
    k, g = 4, 2 * TILE
    want = {
        "input_ids": ((4, 16), np.int32), "attention_mask": ((4, 16), np.int32),
        "semantic_ids": ((4, 8), np.int32), "semantic_mask": ((4, 8), np.int32),
        "image": ((4, 64, 64, 3), np.uint8), "views": ((4, g, g, 3), np.uint8),
        "view_mask": ((4, k), np.float32), "view_cameras/c2w": ((4, k, 4, 4), np.float32),
        "view_cameras/focal": ((4, k), np.float32),
        "view_cameras/principal": ((4, k, 2), np.float32),
        "mesh_vertices": ((4, 1536, 3), np.float32), "mesh_faces": ((4, 512, 3), np.int32),
        "mesh_colors": ((4, 1536, 3), np.float32), "mesh_face_mask": ((4, 512), np.float32),
        "faces/features": ((4, 32, 7), np.float32),
        "faces/neighbours": ((4, 32, 3, 7), np.float32),
        "faces/neighbour_mask": ((4, 32, 3), np.float32), "faces/face_mask": ((4, 32), np.float32),
    }  # fmt: skip
    assert specs["pix3d"] == {key: (shape, np.dtype(dt)) for key, (shape, dt) in want.items()}


def test_process_blocks_join_to_the_global_batch_and_resume(prepared):
    config = _config(prepared["data_dir"], "omniobject3d")
    one = input_pipeline.train_iterator(config, "", process_index=0, process_count=1)
    two = [input_pipeline.train_iterator(config, "", process_index=i, process_count=2)
           for i in range(2)]  # fmt: skip
    for _ in range(2):
        whole, parts = next(one), [next(it) for it in two]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    state = one.get_state()
    expected = next(one)
    resumed = input_pipeline.train_iterator(config, "", process_index=0, process_count=1)
    resumed.set_state(state)
    got = next(resumed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_tokens_match_the_captions(prepared, tokenizer):
    """Evaluation batches can keep the strings; their ids are the captions' tokens."""
    source = loader.data_source(prepared["data_dir"], "pix3d", "train", config="tiny")
    it = loader.make_iterator(source, batch_size=3, train=False, shard_index=0, shard_count=1,
                              num_threads=1, max_faces=512, num_sampled_faces=32,
                              model_inputs=_transform(tokenizer, keep_strings=True))  # fmt: skip
    batch = next(it)
    direct = tokenizer(list(batch["caption"]), max_length=16)
    np.testing.assert_array_equal(batch["input_ids"], direct["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], direct["attention_mask"])
    assert list(batch["key"]) == [source[i]["key"].decode() for i in range(3)]


# ------------------------------------------------------------------------- tokens
CAPTIONS = ("a photo of a chair",
            "a photo of a wardrobe beside two small oak tables and a very long sofa",
            "x" * 200)  # fmt: skip


@pytest.mark.parametrize("text_length,semantic_length", [(16, 8), (8, 16), (77, 64), (6, 6)])
def test_sliced_tokens_equal_direct_tokenisation(tokenizer, text_length, semantic_length):
    t = _transform(tokenizer, text_length=text_length, semantic_length=semantic_length)
    # a caption of exactly semantic_length tokens keeps its own end token
    exact = " ".join(["a"] * (min(text_length, semantic_length) - 2))
    for caption in CAPTIONS + (exact,):
        out = t.tokenize(caption)
        for ids, mask, n in (("input_ids", "attention_mask", text_length),
                             ("semantic_ids", "semantic_mask", semantic_length)):  # fmt: skip
            direct = tokenizer([caption], max_length=n)
            np.testing.assert_array_equal(out[ids], direct["input_ids"][0], err_msg=caption)
            np.testing.assert_array_equal(out[mask], direct["attention_mask"][0])
            assert out[ids].dtype == np.int32 and out[mask].dtype == np.int32
    long = t.tokenize(CAPTIONS[2])["semantic_ids"]
    assert long[-1] == tt.EOS and long[0] == tt.BOS and (long[1:-1] != tt.EOS).all()


def test_fit_tokens_and_box_downsample_by_hand():
    ids, mask = fit_tokens([9, 1, 2, 3, 4, 8], 4, eos=8, pad=0)
    np.testing.assert_array_equal(ids, [9, 1, 2, 8])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1])
    ids, mask = fit_tokens([9, 1, 8], 5, eos=8, pad=7)
    np.testing.assert_array_equal(ids, [9, 1, 8, 7, 7])
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0])
    # 2 x 2 blocks: means 0.75 -> 1, 0.5 -> 1 (half up), 0.25 -> 0, 254.5 -> 255
    image = np.array([[0, 1, 0, 0], [1, 1, 0, 2], [0, 0, 255, 254], [0, 1, 255, 254]], np.uint8)
    out = box_downsample(np.repeat(image[..., None], 3, -1), 2)
    np.testing.assert_array_equal(out[..., 0], [[1, 1], [0, 255]])
    assert out.dtype == np.uint8


# ------------------------------------------------------------------------- views and cameras
def _box(image: np.ndarray, size: int) -> np.ndarray:
    """Reference: block means of the whole image, rounded half up."""
    f = image.shape[0] // size
    means = image.astype(np.float64).reshape(size, f, size, f, 3).mean((1, 3))
    return np.floor(means + 0.5).astype(np.uint8)


@pytest.mark.parametrize("dataset", DATASETS)
def test_view_grid_and_tile_cameras(prepared, tokenizer, dataset):
    for ex, out in _examples(prepared, dataset, _transform(tokenizer)):
        n_v = int(ex["mesh_num_vertices"])
        vertices = ex["mesh_vertices"][:n_v]
        if dataset == "pix3d":
            np.testing.assert_array_equal(out["view_mask"], [1, 0, 0, 0])
            np.testing.assert_array_equal(out["views"][:TILE, :TILE], _box(ex["image"], TILE))
            assert (out["views"][TILE:] == 255).all() and (out["views"][:, TILE:] == 255).all()
            size = ex["image"].shape[0]
            originals = [(ex["camera/c2w"], ex["camera/focal"], ex["camera/principal"])] * 4
        else:
            np.testing.assert_array_equal(out["view_mask"], np.ones(4))
            # the whole grid box-filtered = each tile box-filtered (tiles are whole blocks)
            np.testing.assert_array_equal(out["views"], _box(ex["views"], 2 * TILE))
            size = ex["views"].shape[0] // 2
            originals = [(ex["view_cameras/c2w"][k], ex["view_cameras/focal"][k],
                          ex["view_cameras/principal"][k]) for k in range(4)]  # fmt: skip
        np.testing.assert_array_equal(out["image"], ex["image"])  # as prepared, uint8
        for k, (c2w, focal, principal) in enumerate(originals):
            tile_cam = (out["view_cameras/c2w"][k], out["view_cameras/focal"][k],
                        out["view_cameras/principal"][k])  # fmt: skip
            np.testing.assert_allclose(
                _uv(*tile_cam, TILE, vertices),
                _uv(c2w, focal, principal, size, vertices) * (TILE / size),
                rtol=1e-4, atol=1e-3,
            )  # fmt: skip


def _object_pixels(image: np.ndarray) -> np.ndarray:
    """Non-white pixels (renders and photos are composited on white), grown by one pixel (the
    8 neighbours): at 16 px, thin parts and silhouette edges blend with the background."""
    return binary_dilation((image < 245).any(-1), structure=np.ones((3, 3), bool))


@pytest.mark.parametrize("dataset", DATASETS)
def test_tile_cameras_see_the_object_in_their_tiles_and_flips_agree(prepared, tokenizer, dataset):
    """The condition mesh projects onto the object's pixels in each real slot at tile size,
    and flipping before the transform mirrors every real tile and its projections."""
    t = _transform(tokenizer)
    pairs = zip(_examples(prepared, dataset, t), _examples(prepared, dataset, t, flip=True),
                strict=True)  # fmt: skip
    for (ex, out), (_, mirrored) in pairs:
        vertices = ex["mesh_vertices"][: int(ex["mesh_num_vertices"])]
        for k in np.flatnonzero(out["view_mask"]):
            r, c = divmod(int(k), 2)
            tile = out["views"][r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
            flipped_tile = mirrored["views"][r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
            np.testing.assert_array_equal(flipped_tile, tile[:, ::-1])
            cam = [out[f"view_cameras/{f}"][k] for f in ("c2w", "focal", "principal")]
            uv = _uv(*cam, TILE, vertices)
            ij = np.clip(np.floor(uv).astype(int), 0, TILE - 1)
            assert _object_pixels(tile)[ij[:, 1], ij[:, 0]].mean() > 0.98
            flipped_cam = [mirrored[f"view_cameras/{f}"][k] for f in ("c2w", "focal", "principal")]
            uv_f = _uv(*flipped_cam, TILE, vertices * np.array([-1.0, 1.0, 1.0], np.float32))
            np.testing.assert_allclose(uv_f[:, 0], TILE - uv[:, 0], atol=1e-3)
            np.testing.assert_allclose(uv_f[:, 1], uv[:, 1], atol=1e-3)


# ------------------------------------------------------------------------- user errors
def _raises(config, match: str, **kw):
    with pytest.raises(UserError, match=match) as info:
        input_pipeline.train_iterator(config, "unused", process_index=0,
                                      process_count=kw.pop("process_count", 1))  # fmt: skip
    assert "\n" not in str(info.value)


def test_user_errors_name_the_override(prepared, tmp_path, monkeypatch):
    data_dir = prepared["data_dir"]
    _raises(_config(""), r"not set: set --config\.data\.data_dir=DIR.*data_pipelines\.prepare")
    _raises(_config(str(tmp_path / "nowhere")), r"does not exist: set --config\.data\.data_dir")
    only_pix3d = tmp_path / "only_pix3d"
    only_pix3d.mkdir()
    os.symlink(os.path.join(data_dir, "pix3d"), only_pix3d / "pix3d")
    _raises(_config(str(only_pix3d), "omniobject3d"),
            r"holds pix3d, not omniobject3d: set --config\.data\.dataset=pix3d")  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    _raises(_config(str(empty)), r"holds no prepared data set")
    wrong_config = _config(data_dir)
    wrong_config.data.config_name = "default"
    _raises(wrong_config, r"set --config\.data\.config_name=tiny")
    wrong_split = _config(data_dir)
    wrong_split.data.split = "validation"
    _raises(wrong_split, r"no split 'validation' \(it has .*train.*\): set --config\.data\.split")
    _raises(_config(data_dir), r"not divisible by the 3 processes", process_count=3)
    _raises(_config(data_dir, tile_size=24), r"tile_size=24 \(not a divisor\)")
    missing = _config(data_dir, tokenizer_path="tok")
    missing.weights_dir = str(tmp_path / "weights")
    _raises(
        missing,
        r"weights folder '.*weights/tok' for model\.tokenizer_path='tok' .*not "
        r"found; set --config\.weights_dir=DIR or --config\.model\.tokenizer_path=",
    )
    clip = _config(data_dir, clip=dict(path="/nonexistent/clip"))
    _raises(
        clip,
        r"weights folder '/nonexistent/clip' for model\.clip\.path=.*"
        r"--config\.model\.clip\.path=FOLDER",
    )
    # the same relative path resolves under weights_dir once the folder is there
    tt.write_tiny_tokenizer(str(tmp_path / "weights" / "tok"))
    assert next(input_pipeline.train_iterator(missing, "", process_index=0, process_count=1))
    with monkeypatch.context() as mp:
        mp.setattr(loader, "data_source", lambda *a, **k: [])
        _raises(_config(data_dir), r"split 'train' of pix3d/tiny .* is empty")


# ------------------------------------------------------------------------- tiny tokenizer
def test_tiny_tokenizer_keeps_every_synthetic_category(tokenizer):
    from data_pipelines.examples import Spec
    from data_pipelines.synthetic.pix3d import PIX3D_CATEGORIES
    from data_pipelines.synthetic.shapes import CATEGORIES

    assert len(tokenizer.hf) == tt.VOCAB_SIZE
    assert (tokenizer.hf.bos_token_id, tokenizer.hf.eos_token_id) == (tt.BOS, tt.EOS)
    assert tokenizer.hf.pad_token_id == tt.EOS
    for category in sorted(set(CATEGORIES) | set(PIX3D_CATEGORIES)):
        caption = Spec().caption(category)
        out = tokenizer(caption, max_length=16)
        ids, n = out["input_ids"][0], int(out["attention_mask"][0].sum())
        tokens = tokenizer.hf.convert_ids_to_tokens([int(i) for i in ids[:n]])
        # every word one token, the category word kept, the end token inside the 16
        assert tokens[-2] == f"{category}</w>" and n == len(caption.split()) + 2 <= 16
        assert ids[n - 1] == tt.EOS and (ids < tt.VOCAB_SIZE).all()
    # other text still tokenises, byte by byte
    odd = tokenizer("zebra!", max_length=16)
    assert int(odd["attention_mask"].sum()) == 2 + 6


def test_stale_tiny_tokenizer_is_rewritten(tmp_path):
    folder = str(tmp_path / "tiny_tokenizer")
    os.makedirs(folder)
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        f.write('{"model": {"vocab": {"a</w>": 0}, "merges": []}}')  # an older vocabulary
    assert not tt.is_current(folder)
    assert tt.ensure_tiny_tokenizer(folder) == folder and tt.is_current(folder)
    assert len(CLIPTokenizer(folder).hf) == tt.VOCAB_SIZE
