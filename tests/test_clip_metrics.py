"""CMMD, FID_CLIP and CLIP-score against their references: clean-fid (`frechet_distance`,
`img_preprocess_clip`), the CMMD reference's preprocessing and formula, torchmetrics' CLIPScore
on the tiny random CLIP loaded into both."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from torch_references import import_cleanfid, import_torchvision

from nd3d_jax.errors import UserError
from nd3d_jax.metrics.clip_features import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPFeatures,
    cmmd_resize,
    fid_resize,
    preprocess_images,
    to_uint8,
)
from nd3d_jax.metrics.clip_score import (
    clip_i,
    clip_score,
    clip_score_from_embeddings,
    pair_cosines,
    torchmetrics_scale,
)
from nd3d_jax.metrics.cmmd import cmmd
from nd3d_jax.metrics.fid import feature_stats, fid_clip, frechet_distance

SHAPES = [(300, 250), (224, 224), (97, 131), (500, 223), (224, 231), (226, 225)]


@pytest.fixture(scope="module")
def features(tiny_clip):
    return CLIPFeatures(str(tiny_clip[0]), batch_size=4)


@pytest.fixture(scope="module")
def cleanfid_clip():
    """clean-fid's `fid` and `clip_features` modules. `clip_features` imports openai's `clip`
    package at the top (for `CLIP_fx`, which we do not use); when it is not installed an empty
    placeholder module stands in, so `img_preprocess_clip` (torchvision + PIL only) imports."""
    fid, _ = import_cleanfid()
    if importlib.util.find_spec("clip") is None and "clip" not in sys.modules:
        sys.modules["clip"] = types.ModuleType("clip")
    return fid, importlib.import_module("cleanfid.clip_features")


def _images(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


# ------------------------------------------------------------------------------ FID_CLIP


def test_frechet_distance_matches_cleanfid(cleanfid_clip):
    fid, _ = cleanfid_clip
    rng = np.random.default_rng(1)
    for n, d in ((40, 8), (5, 8)):  # full-rank and singular covariances
        a = rng.normal(size=(n, d)).astype(np.float32)
        b = (0.7 * rng.normal(size=(n + 3, d)) + 0.3).astype(np.float32)
        ref = fid.frechet_distance(*feature_stats(a), *feature_stats(b))
        ref_stats = (np.mean(a, 0), np.cov(a, rowvar=False), np.mean(b, 0), np.cov(b, rowvar=False))
        assert fid.frechet_distance(*ref_stats) == pytest.approx(ref, rel=1e-12)
        assert fid_clip(a, b) == pytest.approx(ref, rel=1e-4)
        assert frechet_distance(*ref_stats) == pytest.approx(ref, rel=1e-4)
    assert fid_clip(a, a) == pytest.approx(0.0, abs=1e-3)


def test_fid_errors():
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(UserError, match="at least 2"):
        fid_clip(x[:1], x)
    with pytest.raises(UserError, match="sizes differ"):
        fid_clip(x, x[:, :6])


def test_fid_resize_equals_cleanfid(cleanfid_clip):
    _, clip_features = cleanfid_clip
    for img in _images(SHAPES):
        ref = clip_features.img_preprocess_clip(img)
        ours = fid_resize(img, 224)
        assert ours.dtype == np.uint8 and ours.shape == (224, 224, 3)
        np.testing.assert_array_equal(ours, ref)  # exact: the same PIL calls and crop offsets


# ------------------------------------------------------------------------------ CMMD


def _ref_center_crop_and_resize(im, size):
    """google-research cmmd/io_util.py `_center_crop_and_resize`, verbatim."""
    w, h = im.size
    side = min(w, h)
    top = (h - side) // 2
    left = (w - side) // 2
    box = (left, top, left + side, top + side)
    im = im.crop(box)
    return im.resize((size, size), resample=Image.BICUBIC)


def test_cmmd_resize_matches_reference():
    """io_util's PIL crop + resize, / 255, then the resize in embedding.py (jax.image.resize
    bicubic; torch `F.interpolate(mode="bicubic")` in the PyTorch port) to the same size."""
    import jax

    for img in _images(SHAPES[:3] + [(120, 200)], seed=2):
        ref = np.asarray(_ref_center_crop_and_resize(Image.fromarray(img), 336), np.float32)
        ref = ref[None] / 255.0
        t = torch.from_numpy(ref).permute(0, 3, 1, 2)
        ref_torch = torch.nn.functional.interpolate(t, size=(336, 336), mode="bicubic")
        ref_torch = ref_torch.permute(0, 2, 3, 1).numpy()
        ref_jax = np.asarray(jax.image.resize(ref, ref.shape, method="bicubic"))
        ours = cmmd_resize(img, 336)
        np.testing.assert_allclose(ours, ref_torch[0], atol=1e-5)
        np.testing.assert_allclose(ours, ref_jax[0], atol=1e-5)
    # the crop box: dark bands either side of a white square keep only the square
    img = np.zeros((40, 70, 3), np.uint8)
    img[:, 15:55] = 255
    np.testing.assert_array_equal(cmmd_resize(img, 336), 1.0)
    np.testing.assert_array_equal(cmmd_resize(img.transpose(1, 0, 2), 16), 1.0)


def _cmmd_numpy(x, y, sigma=10.0, scale=1000.0):
    """The published formula in float64: biased MMD^2 with a Gaussian RBF kernel."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * sigma**2)).mean()

    return scale * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_formula_and_hand_cases():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 16))
    y = rng.normal(size=(5, 16)) + 0.5
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert cmmd(x, y) == pytest.approx(_cmmd_numpy(x, y), rel=1e-3)
    xs, ys = 4.0 * x, 3.0 * y  # farther apart: a larger value, checked tighter
    assert cmmd(xs, ys) == pytest.approx(_cmmd_numpy(xs, ys), rel=1e-4)
    assert cmmd(xs, ys, sigma=2.0, scale=1.0) == pytest.approx(
        _cmmd_numpy(xs, ys, 2.0, 1.0), rel=1e-4
    )
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-3)
    # x = {a, a}, y = {b, b}: 1000 * (2 - 2 exp(-|a - b|^2 / (2 sigma^2)))
    a, b = np.array([3.0, 0.0, 4.0]), np.array([0.0, 1.0, -2.0])
    want = 1000 * (2 - 2 * np.exp(-np.sum((a - b) ** 2) / 200.0))
    assert cmmd(np.stack([a, a]), np.stack([b, b])) == pytest.approx(want, rel=1e-4)


def test_cmmd_errors():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(UserError, match="at least 2"):
        cmmd(x[:1], x)
    with pytest.raises(UserError, match="at least 2"):
        cmmd(x, x[:1])
    with pytest.raises(UserError, match="sizes differ"):
        cmmd(x, x[:, :3])
    with pytest.raises(UserError, match="non-finite"):
        cmmd(x, np.full((3, 4), np.nan))


# ------------------------------------------------------------------------------ embeddings


def test_image_embeddings_match_torch_and_chunking(features, tiny_clip):
    _, ref = tiny_clip
    imgs = np.stack(_images([(40, 52)] * 5, seed=4))  # 5 images: one full chunk of 4 + padding
    for mode in ("cmmd", "fid"):
        ours = features.image_embeddings(imgs, preprocess=mode)
        pixels = torch.from_numpy(preprocess_images(imgs, 32, mode)).permute(0, 3, 1, 2)
        with torch.no_grad():
            want = ref.get_image_features(pixel_values=pixels).pooler_output.numpy()
        if mode == "cmmd":
            want = want / np.linalg.norm(want, axis=1, keepdims=True)
            np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(ours, want, atol=1e-4)
    # float [0, 1] images are quantised as a PNG would be
    as_float = features.image_embeddings(imgs[:2] / 255.0, preprocess="fid")
    np.testing.assert_allclose(as_float, ours[:2], atol=1e-5)
    np.testing.assert_allclose(
        preprocess_images(imgs[:1], 32, "fid")[0],
        (fid_resize(imgs[0], 32) / 255.0 - CLIP_MEAN) / CLIP_STD,
        atol=1e-6,
    )


def test_image_input_errors(features):
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        to_uint8(np.full((1, 4, 4, 3), 1.5, np.float32))
    with pytest.raises(UserError, match="NHWC"):
        to_uint8(np.zeros((1, 4, 4, 4), np.uint8))
    with pytest.raises(UserError, match="preprocess"):
        features.image_embeddings(np.zeros((1, 8, 8, 3), np.uint8), preprocess="bilinear")
    with pytest.raises(UserError, match="2 image"):
        clip_score(features, np.zeros((2, 8, 8, 3), np.uint8), ["a"])


# ------------------------------------------------------------------------------ CLIP-score


def _torchmetrics_clip(folder):
    """torchmetrics' CLIPScore on the tiny CLIP, through the callable it accepts for
    `model_name_or_path` (a local folder name is rejected: it only takes "openai/..." names).

    transformers 5's `get_image_features` / `get_text_features` return output objects whose
    `pooler_output` is the projected embedding; torchmetrics 1.9 expects the tensor, so the
    subclass returns `.pooler_output`. The image processor is the PIL one (openai CLIP's bicubic
    short-side resize + center crop) at the tiny model's 32 px."""
    import_torchvision()  # transformers' image processors and torchmetrics import torchvision
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    class TensorFeatures(CLIPModel):
        def get_image_features(self, *args, **kwargs):
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return super().get_text_features(*args, **kwargs).pooler_output

    model = TensorFeatures.from_pretrained(str(folder)).eval()
    size = model.config.vision_config.image_size
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder)),
    )
    return CLIPScore, (lambda: (model, processor))


def test_clip_score_matches_torchmetrics(features, tiny_clip):
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    CLIPScore, load = _torchmetrics_clip(tiny_clip[0])
    model, processor = load()
    imgs = np.stack(_images([(48, 48)] * 6, seed=5))  # square: every crop convention agrees
    texts = ["a red chair", "a wooden table", "lamp", "a small blue car", "a cup", "two shoes"]
    timgs = list(torch.from_numpy(imgs).permute(0, 3, 1, 2))

    img_emb = features.image_embeddings(imgs, preprocess="fid")
    txt_emb = features.text_embeddings(texts)
    cos = pair_cosines(img_emb, txt_emb)
    with torch.no_grad():
        per_pair, n = _clip_score_update(timgs, texts, model, processor)  # 100 x cos, unclamped
        metric = CLIPScore(model_name_or_path=load)
        metric.update(timgs, texts)
        total = float(metric.compute())
        image_pairs, _ = _clip_score_update(timgs[:3], timgs[3:], model, processor)
    assert n == 6
    np.testing.assert_allclose(100 * cos, per_pair.numpy(), atol=1e-3)
    ours = clip_score(features, imgs, texts)
    assert ours == pytest.approx(clip_score_from_embeddings(img_emb, txt_emb), abs=1e-7)
    assert torchmetrics_scale(ours) == pytest.approx(total, abs=1e-3)  # max(100 mean cos, 0)
    assert torchmetrics_scale(-0.2) == 0.0
    want_i = float(image_pairs.mean()) / 100
    assert clip_i(features, imgs[:3], imgs[3:]) == pytest.approx(want_i, abs=1e-5)
