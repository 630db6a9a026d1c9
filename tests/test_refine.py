import dataclasses

import jax
import numpy as np
import pytest
import trimesh

from nd3d_jax.geometry import analytic
from nd3d_jax.geometry.extract import mesh_from_sdf
from nd3d_jax.geometry.mesh_ops import MeshError
from nd3d_jax.geometry.refine import (
    RefineSettings,
    init_sdf_mlp,
    refine_loss,
    refine_mesh,
    refinement_points,
)
from nd3d_jax.metrics.chamfer import mesh_chamfer

TINY = RefineSettings(
    recipe="paper",
    hidden_dim=128,
    out_hidden_dim=32,
    num_key_points=1024,
    num_uniform_points=1024,
    resolution=32,
)
TRUE = analytic.sphere(0.6)
NOISY = analytic.bumpy(TRUE, amplitude=0.04)


@pytest.fixture(scope="module")
def noisy_sphere():
    field = analytic.analytic_field(NOISY)
    coarse = mesh_from_sdf(NOISY, 32)
    return coarse, field


@pytest.fixture(scope="module")
def refined(noisy_sphere):
    coarse, field = noisy_sphere
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    return refine_mesh(coarse, field, TINY, mesh=mesh)


def test_paper_defaults():
    s = RefineSettings()
    assert s.recipe == "faithful"  # the default; the printed recipe's numbers stay below
    assert (s.num_key_points, s.vertex_stride, s.steps) == (2048, 100, 50)
    assert (s.learning_rate, s.weight_decay) == (1e-4, 1e-5)
    assert (s.loss, s.disp_weight, s.eq7_lambda) == ("eq6", 0.3, 0.5)
    assert (s.hidden_dim, s.out_hidden_dim) == (1024, 256)


def test_refinement_lowers_the_loss_and_denoises(refined, noisy_sphere):
    coarse, _ = noisy_sphere
    assert refined.losses.shape == (50,)
    assert refined.losses[-1] < 0.2 * refined.losses[0]
    assert refined.mesh.is_watertight
    assert len(refined.mesh.split(only_watertight=False)) == 1  # no floaters
    truth = mesh_from_sdf(TRUE, 96)
    d_refined = mesh_chamfer(refined.mesh, truth, 10000)
    d_coarse = mesh_chamfer(coarse, truth, 10000)
    assert d_refined < 0.95 * d_coarse


def test_loss_equations_by_hand():
    settings = dataclasses.replace(TINY, hidden_dim=16, out_hidden_dim=8)
    kp = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    module, params = init_sdf_mlp(
        dataclasses.replace(settings, init="lecun"), jax.random.key(0), kp
    )
    v_in = np.random.default_rng(1).normal(size=(6, 67)).astype(np.float32)
    target = np.linspace(-0.3, 0.2, 6).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0], bool)
    sdf, disp = (np.asarray(a) for a in module.apply({"params": params}, v_in))
    sq = (sdf[:, 0] - target) ** 2
    eq6 = np.mean((sq + 0.3 * np.sum(disp**2, -1))[:5])
    eq7 = np.mean((sq + 0.5 * np.linalg.norm(disp, axis=-1))[:5])
    got6 = refine_loss(module, params, v_in, target, mask, settings)
    got7 = refine_loss(
        module, params, v_in, target, mask, dataclasses.replace(settings, loss="eq7")
    )
    np.testing.assert_allclose(got6, eq6, rtol=1e-5)
    np.testing.assert_allclose(got7, eq7, rtol=1e-5)


def test_eq7_and_sharded_fit_agree_with_single_device(noisy_sphere):
    coarse, field = noisy_sphere
    settings = dataclasses.replace(TINY, loss="eq7", resolution=16, hidden_dim=64, steps=10)
    single = refine_mesh(coarse, field, settings)
    sharded = refine_mesh(coarse, field, settings, mesh=jax.make_mesh((4, 2), ("data", "fsdp")))
    assert np.all(np.isfinite(single.losses))
    np.testing.assert_allclose(single.losses, sharded.losses, rtol=1e-4, atol=1e-6)
    assert len(single.mesh.faces) == len(sharded.mesh.faces)


def test_training_points_layout(noisy_sphere):
    coarse, field = noisy_sphere
    key_points, v_in, target, mask = refinement_points(coarse, field, TINY)
    n = TINY.num_key_points * (1 + TINY.num_jitter_copies) + TINY.num_uniform_points
    assert key_points.shape == (TINY.num_key_points, 3)
    assert int(mask.sum()) == n and len(mask) % jax.device_count() == 0
    assert v_in.shape == (len(mask), 67)
    np.testing.assert_allclose(v_in[: len(key_points), :3], key_points)
    np.testing.assert_allclose(target[:n], np.asarray(NOISY(v_in[:n, :3])), atol=1e-6)
    # Key points lie on the coarse surface, where the coarse SDF is ~0.
    assert np.abs(target[: len(key_points)]).max() < 0.01


def test_bad_inputs(noisy_sphere):
    coarse, field = noisy_sphere
    empty = trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), np.int64))
    with pytest.raises(MeshError, match="no faces"):
        refine_mesh(empty, field, TINY)

    def nan_field(points):
        sdf, feats = field(points)
        return np.where(np.asarray(points)[:, 0] > 0.5, np.nan, sdf), feats

    with pytest.raises(ValueError, match="NaN/inf sdf"):
        refine_mesh(coarse, nan_field, TINY)
    with pytest.raises(ValueError, match=r"f_tex \(\d+, 64\)"):
        refine_mesh(coarse, lambda p: field(p)[0], TINY)
    with pytest.raises(ValueError, match=r"f_tex \(\d+, 64\)"):
        refine_mesh(coarse, lambda p: (field(p)[0], field(p)[1][:, :3]), TINY)
    with pytest.raises(ValueError, match="loss"):
        RefineSettings(loss="l1")
    for bad in (0.0, 0.2):
        with pytest.raises(ValueError, match="max_deform"):
            RefineSettings(max_deform=bad)
    with pytest.raises(ValueError, match="jitter_std"):
        RefineSettings(jitter_std=-0.1)
