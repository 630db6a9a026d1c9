"""LPIPS (AlexNet, VGG-16) against the `lpips` package with the same random backbone weights,
its shipped linear heads, the converter round trip, and the errors users meet."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from torch_references import import_lpips

from nd3d_jax.errors import UserError
from nd3d_jax.metrics.lpips import LPIPSMetric
from nd3d_jax.models.lpips import min_size
from nd3d_jax.weights import convert
from nd3d_jax.weights.io import WeightImportError
from nd3d_jax.weights.lpips import load_lpips

BACKBONE_FILE = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def write_folder(folder: str, ref, net: str) -> str:
    """The user's layout: torchvision's backbone state dict (`features.N.*`, plus classifier
    keys to ignore) and the lpips package's linear-layer file, copied as shipped."""
    lpips = import_lpips()
    os.makedirs(folder)
    state = {}
    for key, value in ref.net.state_dict().items():  # slice1.0.weight -> features.0.weight
        _, index, leaf = key.split(".")
        state[f"features.{index}.{leaf}"] = value.clone()
    state["classifier.1.weight"] = torch.zeros(4, 4)
    torch.save(state, os.path.join(folder, BACKBONE_FILE[net]))
    shipped = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth")
    shutil.copy(shipped, os.path.join(folder, f"{net}.pth"))
    return folder


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """net -> (net, lpips reference, folder, image pairs in [0, 1], reference distances)."""
    cache = {}

    def get(net):
        if net not in cache:
            cache[net] = _case(net, tmp_path_factory)
        return cache[net]

    return get


@pytest.fixture(params=["alex", "vgg"])
def case(request, build):
    return build(request.param)


def _case(net, tmp_path_factory):
    lpips = import_lpips()
    torch.manual_seed(0)
    ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
    folder = write_folder(str(tmp_path_factory.mktemp(net) / "src"), ref, net)
    rng = np.random.default_rng(1)
    x0, x1 = (rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32) for _ in range(2))
    with torch.no_grad():
        t = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()) for x in (x0, x1)]
        want = ref(*t, normalize=True).reshape(-1).numpy().astype(np.float64)
    return net, ref, folder, (x0, x1), want


def test_matches_lpips_package(case):
    net, _, folder, (x0, x1), want = case
    module, params = load_lpips(folder)
    assert module.net == net
    got = np.asarray(module.apply({"params": params}, 2 * x0 - 1, 2 * x1 - 1))  # [-1, 1] input
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert want.min() > 1e-3  # distinct images: a non-trivial comparison
    metric = LPIPSMetric(module, params, batch_size=3)  # [0, 1] path, one padded batch
    np.testing.assert_allclose(metric(x0, x1), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(metric(x0, x0), 0.0, atol=1e-6)


def test_convert_round_trip(case, tmp_path):
    net, ref, folder, (x0, x1), want = case
    out = str(tmp_path / "converted")
    convert.main([folder, out])
    metric = LPIPSMetric.from_folder(out, batch_size=2)
    assert metric.net == net
    np.testing.assert_allclose(metric(x0, x1), want, atol=1e-4, rtol=1e-4)
    single = str(tmp_path / "lpips_state_dict")  # one file: a saved lpips.LPIPS state dict
    os.makedirs(single)
    torch.save(ref.state_dict(), os.path.join(single, "lpips.pth"))
    st = str(tmp_path / "safetensors")  # the same two files as .safetensors (no torch needed)
    os.makedirs(st)
    for name in os.listdir(folder):
        state = {
            k: v.numpy()
            for k, v in torch.load(os.path.join(folder, name), map_location="cpu").items()
        }
        save_file(state, os.path.join(st, name.replace(".pth", ".safetensors")))
    _, converted = load_lpips(out, host=True)
    flat = jax.tree_util.tree_leaves_with_path
    for other in (single, st):
        _, params = load_lpips(other, host=True)
        for (path, a), (_, b) in zip(flat(params), flat(converted), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{other} {path}")
    u8 = (np.stack([x0[0], x1[0]]) * 255).round().astype(np.uint8)  # uint8 == its [0, 1] float
    np.testing.assert_allclose(metric(u8, u8[::-1]), metric(u8 / 255.0, u8[::-1] / 255.0))


def test_min_size_is_where_torch_fails(case):
    net, ref, folder, _, _ = case
    need = min_size(net)
    assert need == {"alex": 31, "vgg": 16}[net]
    with torch.no_grad():
        ref(torch.zeros(1, 3, need, need), torch.ones(1, 3, need, need))
        with pytest.raises(RuntimeError):
            ref(torch.zeros(1, 3, need - 1, need), torch.ones(1, 3, need - 1, need))
    metric = LPIPSMetric.from_folder(folder)
    with pytest.raises(UserError, match=f">= {need} px"):
        metric(np.zeros((1, need - 1, need, 3)), np.zeros((1, need - 1, need, 3)))


def test_user_errors(build, tmp_path):
    net, ref, folder, (x0, x1), _ = build("alex")
    metric = LPIPSMetric.from_folder(folder)
    with pytest.raises(UserError, match="differ in shape"):
        metric(x0, x1[:1])
    with pytest.raises(UserError, match="RGB"):
        metric(x0[..., :1], x1[..., :1])
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        metric(2 * x0 - 1, x1)
    with pytest.raises(WeightImportError, match="not found"):
        load_lpips(str(tmp_path / "nowhere"))
    only_backbone = str(tmp_path / "only_backbone")
    os.makedirs(only_backbone)
    shutil.copy(os.path.join(folder, BACKBONE_FILE[net]), only_backbone)
    with pytest.raises(WeightImportError, match=r"no LPIPS linear heads"):
        load_lpips(only_backbone)
    bad = str(tmp_path / "bad_key")
    os.makedirs(bad)
    shutil.copy(os.path.join(folder, "alex.pth"), bad)
    state = torch.load(os.path.join(folder, BACKBONE_FILE[net]))
    state["features.3.weigth"] = state.pop("features.3.weight")
    state["features.6.bias"] = torch.zeros(7)
    torch.save(state, os.path.join(bad, BACKBONE_FILE[net]))
    with pytest.raises(WeightImportError) as e:
        load_lpips(bad)
    msg = str(e.value)
    assert "missing: features_3/kernel" in msg
    assert "1 unexpected: features.3.weigth" in msg
    assert "1 mis-shaped: features.6.bias (7,)" in msg
