"""The coarse mesh of P1 (`nd3d_jax.prior.mesh`): extraction of analytic fields, the Shap-E field
against diffusers' STF query (tiny and real widths), our mesh against skimage's marching cubes on
the same samples and against diffusers' `decode_to_mesh`, refinement from the Shap-E field, f_tex
pooling, and the exports."""

from __future__ import annotations

import copy
import math
import warnings

import jax
import numpy as np
import pytest
import torch
import trimesh
from gltf_validator import assert_valid_glb

from nd3d_jax.errors import UserError
from nd3d_jax.geometry import analytic
from nd3d_jax.geometry.refine import RefineSettings, refine_mesh
from nd3d_jax.prior import load_shap_e
from nd3d_jax.prior.mesh import (
    export_coarse,
    extract_coarse,
    grid_points,
    pad_outside,
    srgb_to_linear,
)
from nd3d_jax.prior.shap_e import pooling_matrix

RES = 32  # the tiny pipeline's mesh resolution (cell 2 / 31)


def cell(resolution: int) -> float:
    return 2.0 / (resolution - 1)


def analytic_mesh(sdf_fn, resolution: int, grid: str = "exact") -> trimesh.Trimesh:
    sdf = np.asarray(sdf_fn(grid_points(resolution)))
    with warnings.catch_warnings():  # the padding keeps every surface off the grid's border
        warnings.filterwarnings("error", "the shape reaches the grid's boundary")
        return extract_coarse(sdf, resolution, grid)


def chamfer(a: trimesh.Trimesh, b: trimesh.Trimesh, count: int = 4000) -> tuple[float, float]:
    """(symmetric Chamfer distance, largest distance): surface samples of each mesh to the
    other mesh's surface (exact point-to-triangle distances), both directions."""
    da = trimesh.proximity.closest_point(b, trimesh.sample.sample_surface(a, count, seed=0)[0])[1]
    db = trimesh.proximity.closest_point(a, trimesh.sample.sample_surface(b, count, seed=1)[0])[1]
    return 0.5 * (da.mean() + db.mean()), max(da.max(), db.max())


def skimage_mesh(volume: np.ndarray, spacing: float, origin: float) -> trimesh.Trimesh:
    """skimage's marching cubes of a padded (R + 2)^3 volume (negative inside) in world units."""
    from skimage.measure import marching_cubes

    verts, faces, _, _ = marching_cubes(volume, 0.0, spacing=(spacing,) * 3)
    return trimesh.Trimesh(verts + origin, faces, process=False)


def diffusers_mc_tables() -> tuple[np.ndarray, np.ndarray]:
    """`MeshDecoder`'s `cases` (256, 5, 3) and `masks` (256, 5) buffers. A fresh ShapERenderer
    holds zeros (the checkpoint stores the tables), so they are rebuilt from skimage's classic
    (Lorensen) marching cubes of each 2^3 corner pattern: bit x + 2y + 4z set = inside; edge
    4 axis + a + 2 b spans `axis` at the other two coordinates (a, b) (`_create_flat_edge_indices`).
    """
    from skimage.measure import marching_cubes

    cases, masks = np.zeros((256, 5, 3), np.int64), np.zeros((256, 5), bool)
    for case in range(1, 255):
        inside = ((case >> np.arange(8)) & 1).reshape(2, 2, 2).transpose(2, 1, 0)  # [x, y, z]
        verts, faces, _, _ = marching_cubes(np.where(inside, 1.0, -1.0), 0.0, method="lorensen")
        doubled = np.round(verts * 2).astype(np.int64)  # midpoints: the edge's axis reads 1
        axis = np.argmax(doubled == 1, axis=1)
        other = np.sort(np.stack([(axis + 1) % 3, (axis + 2) % 3], 1), axis=1)
        a, b = (np.take_along_axis(doubled, other, 1) // 2).T
        cases[case, : len(faces)] = (4 * axis + a + 2 * b)[faces]
        masks[case, : len(faces)] = True
    return cases, masks


# ---------------------------------------------------------------------------- analytic fields
BOX = (0.5, 0.35, 0.45)
ANALYTIC = {
    "sphere": (analytic.sphere(0.6), analytic.sphere_area_volume(0.6)[1]),
    "box": (analytic.box(BOX), analytic.box_area_volume(BOX)[1]),
}


@pytest.mark.parametrize("name", sorted(ANALYTIC))
def test_analytic_field_volume_and_diffusers_scale(name):
    resolution = 48
    sdf_fn, volume = ANALYTIC[name]
    exact = analytic_mesh(sdf_fn, resolution, "exact")
    assert exact.is_watertight and exact.is_winding_consistent
    assert len(exact.split(only_watertight=False)) == 1
    assert abs(exact.volume - volume) < 0.01 * volume, (name, exact.volume, volume)
    # grid="diffusers": the padded grid mapped onto [-1, 1]^3, i.e. scaled by (R - 1) / (R + 1)
    shrunk = analytic_mesh(sdf_fn, resolution, "diffusers")
    np.testing.assert_array_equal(shrunk.faces, exact.faces)
    scale = (resolution - 1) / (resolution + 1)
    np.testing.assert_allclose(shrunk.vertices, exact.vertices * scale, atol=1e-6)


def test_shape_through_the_cube_is_closed_by_the_padding():
    """A box larger than the cube: every sample on the cube's faces is -0.5, the padding +1
    lies one cell h outside, so the closing faces sit at 1 + h / 3 (linear interpolation)."""
    r = RES  # the tiny pipeline's grids: the extraction programs are shared
    h = cell(r)
    for grid, scale in (("exact", 1.0), ("diffusers", (r - 1) / (r + 1))):
        mesh = analytic_mesh(analytic.box((1.5, 1.5, 1.5)), r, grid)
        assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1
        bound = (1 + h / 3) * scale
        np.testing.assert_allclose(mesh.bounds, [[-bound] * 3, [bound] * 3], atol=1e-5)
    # a sphere cut by the cube: closed where the padding meets the most negative sample s of
    # the face x = 1, at x = 1 + h (-s) / (1 - s)
    sdf = np.asarray(analytic.sphere(1.2)(grid_points(r)))
    s = sdf.reshape(r, r, r)[-1].min()
    mesh = analytic_mesh(analytic.sphere(1.2), r, "exact")
    assert mesh.is_watertight and s < 0
    np.testing.assert_allclose(mesh.bounds[1, 0], 1 + h * -s / (1 - s), atol=1e-5)


def test_bad_grid_arguments_are_user_errors():
    with pytest.raises(UserError, match="grid"):
        extract_coarse(np.ones(8), 2, "marching")
    with pytest.raises(UserError, match="SDF values"):
        extract_coarse(np.ones(9), 2)


# ---------------------------------------------------------------------------- the tiny pipeline
@pytest.fixture(scope="module")
def tiny(tiny_shap_e):
    folder, pipe = tiny_shap_e["image"]
    shap_e = load_shap_e(folder)
    latents = np.random.default_rng(0).standard_normal((1, *shap_e.latent_shape), np.float32)
    return shap_e, copy.deepcopy(pipe.shap_e_renderer), latents


@pytest.fixture(scope="module")
def coarse(tiny):
    shap_e, _, latents = tiny
    (mesh,) = shap_e.coarse_mesh(latents, RES)
    return mesh


def torch_stf(renderer, latents: np.ndarray, points: np.ndarray):
    """diffusers' STF query as `decode_to_mesh` runs it: the latent's projected weights copied
    into the MLP, then (signed_distance, channels, last hidden activation)."""
    hidden = []
    hook = renderer.mlp.mlp[-2].register_forward_hook(
        lambda m, i, o: hidden.append(torch.nn.functional.silu(o))
    )
    try:
        with torch.no_grad():
            projected = renderer.params_proj(torch.from_numpy(latents))
            for name, param in renderer.mlp.state_dict().items():
                if f"nerstf.{name}" in projected:
                    param.copy_(projected[f"nerstf.{name}"].squeeze(0))
            out = renderer.mlp(
                position=torch.from_numpy(points)[None],
                direction=None,
                ts=None,
                nerf_level="fine",
                rendering_mode="stf",
            )
    finally:
        hook.remove()
    return out.signed_distance[0, :, 0].numpy(), out.channels[0].numpy(), hidden[0][0].numpy()


def test_tiny_mesh_is_a_compact_closed_blob(coarse):
    """The fixture's field (see `smooth_field`) gives a meaningful mesh, not grid noise."""
    assert 1000 < len(coarse.faces) < 20000
    assert coarse.is_watertight and len(coarse.split(only_watertight=False)) == 1
    assert np.abs(coarse.bounds).max() < 0.9


def test_field_equals_diffusers_stf_query(tiny):
    shap_e, renderer, latents = tiny
    points = np.random.default_rng(1).uniform(-1, 1, (300, 3)).astype(np.float32)
    sdf, rgb, f_tex = (np.asarray(a[0]) for a in shap_e.query(latents, points))
    ref_sdf, ref_rgb, ref_hidden = torch_stf(renderer, latents, points)
    assert (ref_sdf > 0).any() and (ref_sdf < 0).any()  # points on both sides
    np.testing.assert_allclose(sdf, -ref_sdf, atol=1e-5)  # ours: negative inside
    np.testing.assert_allclose(rgb, ref_rgb, atol=1e-5)
    pool = pooling_matrix(ref_hidden.shape[1], 64)
    np.testing.assert_allclose(f_tex, ref_hidden @ pool, atol=1e-5)


def test_real_width_renderer_equals_diffusers(tmp_path):
    """diffusers' default ShapERenderer (d_latent 1024, 93 -> 256 x 6 -> 12), random weights,
    through the importer: raw SDF (positive inside), colour and hidden activation to 1e-5."""
    from diffusers.pipelines.shap_e import ShapERenderer

    from nd3d_jax.weights.shap_e import load_renderer

    torch.manual_seed(0)
    renderer = ShapERenderer().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LayerNorms off identity, every bias non-zero (weights are random)
        for name, p in renderer.named_parameters():
            if name.endswith("norm.weight"):  # projected weights ~ 1 / sqrt(fan_in), as trained:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g)).div_(math.sqrt(len(p)))
            elif "norm" in name or name.endswith("bias"):  # activations stay O(1)
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    renderer.save_pretrained(str(tmp_path), safe_serialization=True)
    module, params = load_renderer(str(tmp_path))
    rng = np.random.default_rng(2)
    latents = rng.standard_normal((1, 1024, 1024), np.float32)
    points = rng.uniform(-1, 1, (256, 3)).astype(np.float32)
    sdf, rgb, hidden = jax.jit(module.apply)({"params": params}, latents, points[None])
    ref_sdf, ref_rgb, ref_hidden = torch_stf(renderer, latents, points)
    del renderer
    assert 0.1 < np.abs(ref_hidden).max() < 100 and (ref_sdf > 0).any() and (ref_sdf < 0).any()
    np.testing.assert_allclose(np.asarray(sdf[0]), ref_sdf, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rgb[0]), ref_rgb, atol=1e-5)
    np.testing.assert_allclose(np.asarray(hidden[0]), ref_hidden, atol=1e-5, rtol=1e-5)


def test_mesh_equals_skimage_marching_cubes(tiny, coarse):
    """Same padded samples, two extractions: our marching tetrahedra vs skimage's marching
    cubes, for both placements (grid="diffusers" is the padded grid on [-1, 1]^3, as diffusers'
    `MeshDecoder`)."""
    shap_e, _, latents = tiny
    sdf, _ = shap_e.field(latents, grid_points(RES))
    volume = pad_outside(np.asarray(sdf[0]), RES).reshape((RES + 2,) * 3)
    h = cell(RES)
    reference = skimage_mesh(volume, h, -1.0 - h)
    mean, worst = chamfer(coarse, reference)
    # both interpolate the same samples linearly along grid edges: far below a cell (measured
    # 6e-4 h mean, 7e-3 h worst)
    assert mean < 0.01 * h and worst < 0.05 * h, (mean / h, worst / h)
    (shrunk,) = shap_e.coarse_mesh(latents, RES, grid="diffusers")
    reference = skimage_mesh(volume, 2.0 / (RES + 1), -1.0)
    mean, worst = chamfer(shrunk, reference)
    assert mean < 0.01 * h and worst < 0.05 * h, (mean / h, worst / h)
    # the check sees the placement: the exact mesh is 0.4 h from diffusers' (a 31/33 scale)
    assert chamfer(coarse, reference)[0] > 0.2 * h


def test_diffusers_grid_equals_decode_to_mesh(tiny):
    """grid="diffusers" against diffusers' own `decode_to_mesh` (its query grid, its -1 border,
    its MeshDecoder placement), colours included (diffusers writes them linear)."""
    shap_e, renderer, latents = tiny
    assert not renderer.mesh_decoder.masks.any()  # the fixture's tables are empty: fill them
    cases, masks = diffusers_mc_tables()
    renderer.mesh_decoder.cases.copy_(torch.from_numpy(cases))
    renderer.mesh_decoder.masks.copy_(torch.from_numpy(masks))
    with torch.no_grad():
        ref = renderer.decode_to_mesh(torch.from_numpy(latents), device="cpu", grid_size=RES)
    reference = trimesh.Trimesh(ref.verts.numpy(), ref.faces.numpy(), process=False)
    (ours,) = shap_e.coarse_mesh(latents, RES, grid="diffusers")
    mean, worst = chamfer(ours, reference)
    h = cell(RES)
    assert mean < 0.01 * h and worst < 0.05 * h, (mean / h, worst / h)
    linear = np.stack([ref.vertex_channels[c].numpy() for c in "RGB"], 1)
    _, rgb = shap_e.field(latents, ref.verts.numpy())
    np.testing.assert_allclose(srgb_to_linear(np.asarray(rgb[0])), linear, atol=1e-5)


def test_vertex_colours_are_the_stf_colours(tiny, coarse):
    shap_e, _, latents = tiny
    _, rgb = shap_e.field(latents, np.asarray(coarse.vertices, np.float32))
    expected = np.round(np.clip(np.asarray(rgb[0]), 0, 1) * 255)
    colours = np.asarray(coarse.visual.vertex_colors)
    assert np.ptp(expected, axis=0).max() > 0  # colours vary over the surface
    assert np.abs(colours[:, :3] - expected).max() <= 1  # float ties at .5 may round apart
    assert (colours[:, :3] == expected).mean() > 0.99 and (colours[:, 3] == 255).all()


def test_refine_from_the_shap_e_field(tiny, coarse):
    shap_e, _, latents = tiny
    field = shap_e.coarse_field(latents[0])
    settings = RefineSettings(
        recipe="paper",
        resolution=24,
        steps=8,
        hidden_dim=64,
        out_hidden_dim=32,
        num_key_points=256,
        num_uniform_points=256,
    )
    result = refine_mesh(coarse, field, settings)
    assert result.mesh.is_watertight and len(result.mesh.faces) > 0
    assert result.losses[-1] < result.losses[0]
    sdf, f_tex = field(result.key_points)
    assert f_tex.shape == (256, 64) and np.isfinite(f_tex).all()
    assert np.abs(sdf).max() < 0.2  # the key points lie on the coarse surface


# ---------------------------------------------------------------------------- f_tex pooling
def test_pooling_matrix_by_hand():
    m = pooling_matrix(256, 64)
    np.testing.assert_allclose(m, np.kron(np.eye(64), np.full((4, 1), 0.25)))
    # fewer channels than bins: bin j lies inside channel floor(j * 8 / 64)
    m = pooling_matrix(8, 64)
    np.testing.assert_array_equal(m, (np.arange(8)[:, None] == np.arange(64) // 8).astype(float))
    # bins of 1.5 channels: overlaps (1, 0.5), (0.5, 1), ... normalised
    m = pooling_matrix(6, 4)
    third = np.array([2.0, 1.0]) / 3
    np.testing.assert_allclose(m[:2, 0], third, rtol=1e-6)
    np.testing.assert_allclose(m[1:3, 1], third[::-1], rtol=1e-6)
    for width in (3, 6, 8, 100, 256):
        np.testing.assert_allclose(pooling_matrix(width, 64).T.sum(1), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------- exports
def test_exports(coarse, tmp_path):
    glb = export_coarse(coarse, str(tmp_path / "coarse.glb"))
    assert_valid_glb(glb)
    scene = trimesh.load(glb, process=False)
    (loaded,) = scene.geometry.values()
    x, y, z = np.asarray(coarse.vertices).T
    np.testing.assert_allclose(loaded.vertices, np.stack([x, z, -y], 1), atol=1e-6)  # Y-up
    np.testing.assert_array_equal(loaded.faces, coarse.faces)
    srgb = np.asarray(coarse.visual.vertex_colors, np.float64)[:, :3] / 255
    linear = np.asarray(loaded.visual.vertex_colors, np.float64)[:, :3] / 255
    assert np.abs(linear - srgb).max() > 0.05  # converted, not copied
    np.testing.assert_allclose(linear, srgb_to_linear(srgb), atol=1 / 255 + 1e-9)

    ply = trimesh.load(export_coarse(coarse, str(tmp_path / "coarse.ply")), process=False)
    np.testing.assert_array_equal(ply.vertices, coarse.vertices)
    np.testing.assert_array_equal(ply.faces, coarse.faces)
    np.testing.assert_array_equal(ply.visual.vertex_colors, coarse.visual.vertex_colors)
    with pytest.raises(UserError, match="glb or .ply"):
        export_coarse(coarse, str(tmp_path / "coarse.obj"))
