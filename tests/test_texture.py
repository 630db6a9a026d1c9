"""Texture baking (M4): a procedurally coloured mesh rendered by our rasterizer, baked into a
fresh atlas and rendered again; visibility behind an occluder; seams; GLB/OBJ export."""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy import ndimage

from nd3d_jax.errors import UserError
from nd3d_jax.prior import mesh as prior_mesh
from nd3d_jax.render.camera import orthographic, pinhole, ring_poses
from nd3d_jax.render.maps import color_image, rasterize_views, to_uint8
from nd3d_jax.texture import (
    TextureSettings,
    atlas_colors,
    bake,
    export,
    export_glb,
    export_obj,
    render_textured,
    render_views,
    texel_fragments,
    textured_trimesh,
    unwrap,
)
from nd3d_jax.texture.atlas_quality import atlas_quality
from tests.gltf_validator import assert_valid_glb

SIZE, PIXELS, FOV, RADIUS = 256, 128, 0.8, 2.2
SETTINGS = TextureSettings(size=SIZE)


def cameras(num, offset=0.0, elevation=0.44):
    """A ring of `num` views at `elevation` (25 degrees) looking at the origin (Z up), azimuths
    from `offset` in steps of 360 / num degrees."""
    poses = ring_poses(num, RADIUS, elevation=elevation)
    rot = trimesh.transformations.rotation_matrix(offset, [0, 0, 1]).astype(np.float32)
    return pinhole(rot @ np.asarray(poses), PIXELS, PIXELS, fov=FOV)


def colour(p):
    """A smooth analytic colour of position, in [0.15, 0.85]."""
    phase = np.array([0.0, 2.0, 4.0])
    return 0.5 + 0.35 * np.sin(3.0 * p @ np.array([[1.0, 0.5, -0.3]]).T + 2.0 * p[:, 2:] + phase)


def render_colours(cams, vertices, faces, colours):
    frags = rasterize_views(cams, jnp.asarray(vertices, jnp.float32), jnp.asarray(faces))
    imgs = jax.vmap(lambda f: color_image(f, jnp.asarray(faces), jnp.asarray(colours)))(frags)
    return np.asarray(imgs), np.asarray(frags.mask)


def psnr(a, b, mask):
    mse = np.mean((a[mask] - b[mask]) ** 2)
    return 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="module")
def sphere_bake():
    """A bumpy icosphere (320 faces), K = 4 views (2x2 ring at 25 degrees), baked."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    v = np.asarray(mesh.vertices)
    mesh = trimesh.Trimesh(v * (1 + 0.1 * np.sin(3 * v[:, :1]) * np.cos(2 * v[:, 1:2])), mesh.faces)
    colours = colour(np.asarray(mesh.vertices)).astype(np.float32)
    cams = cameras(4)
    views, masks = render_colours(cams, mesh.vertices, mesh.faces, colours)
    atlas, base = unwrap(mesh, SETTINGS)  # ours ("charts"); test_xatlas_round_trip: xatlas
    assert base is mesh  # under max_faces: no decimation
    # A wrong fill (mid grey): the round trip must come from the views, not from the fill.
    result = bake(atlas, cams, views, np.full((len(atlas.vertices), 3), 0.5), SETTINGS)
    result = jax.tree.map(np.asarray, result)
    return dict(mesh=mesh, colours=colours, cams=cams, views=views, masks=masks, atlas=atlas,
                result=result)  # fmt: skip


def test_round_trip_psnr(sphere_bake):
    atlas, tex = sphere_bake["atlas"], sphere_bake["result"].texture
    arrays = (atlas.vertices, atlas.faces, atlas.uvs, tex)
    again = np.asarray(render_views(sphere_bake["cams"], *arrays))
    mask = sphere_bake["masks"]
    assert psnr(again, sphere_bake["views"], mask) >= 30.0
    assert np.all(again[~mask] == 1.0)  # white background where nothing is hit
    # Novel views half-way between the baked ones.
    novel = cameras(4, offset=math.pi / 4)
    mesh = sphere_bake["mesh"]
    truth, novel_mask = render_colours(novel, mesh.vertices, mesh.faces, sphere_bake["colours"])
    assert psnr(np.asarray(render_views(novel, *arrays)), truth, novel_mask) >= 25.0


def test_xatlas_round_trip(sphere_bake):
    """The same bake through xatlas's atlas (`texture.unwrapper="xatlas"`; the fixture's atlas
    is ours): the same fidelity, no texel claimed by two charts."""
    settings = dataclasses.replace(SETTINGS, unwrapper="xatlas")
    mesh, cams, views = sphere_bake["mesh"], sphere_bake["cams"], sphere_bake["views"]
    atlas, _ = unwrap(mesh, settings)
    quality = atlas_quality(atlas.vertices, atlas.faces, atlas.uvs, SIZE)
    assert quality.overlap_texels == quality.fold_texels == quality.degenerate_faces == 0
    tex = np.asarray(bake(atlas, cams, views, np.full((len(atlas.vertices), 3), 0.5), settings)
                     .texture)  # fmt: skip
    again = np.asarray(render_views(cams, atlas.vertices, atlas.faces, atlas.uvs, tex))
    assert psnr(again, views, sphere_bake["masks"]) >= 30.0


def test_render_textured_texel_grid():
    """A unit quad filling an orthographic view whose pixels are the texels: the render is the
    texture itself (v down: the image's top row is v = 0)."""
    vertices = np.array(
        [[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0]], np.float32
    )
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    uvs = np.stack([vertices[:, 0] + 0.5, 0.5 - vertices[:, 1]], -1)
    texture = np.random.default_rng(0).uniform(size=(16, 16, 3)).astype(np.float32)
    c2w = np.eye(4, dtype=np.float32)
    c2w[2, 3] = 1.0
    cam = orthographic(c2w, 16, 16, extent=1.0)
    img = np.asarray(render_textured(cam, vertices, faces, uvs, texture))
    np.testing.assert_allclose(img, texture, atol=1e-5)
    # Half a texel to the right: the mean of horizontal neighbours (clamped at the edge).
    img = np.asarray(render_textured(cam, vertices, faces, uvs + [0.5 / 16, 0], texture))
    expect = (texture + np.concatenate([texture[:, 1:], texture[:, -1:]], 1)) / 2
    np.testing.assert_allclose(img, expect, atol=1e-5)


def test_every_chart_texel_filled(sphere_bake):
    atlas, res, colours = sphere_bake["atlas"], sphere_bake["result"], sphere_bake["colours"]
    tex, chart, seen = res.texture, res.chart, res.seen
    assert chart.mean() > 0.3 and np.all(np.isfinite(tex))
    assert 0.6 < seen.sum() / chart.sum() < 0.95  # the bottom is below every camera
    # UV rasterization convention: the texel centre's interpolated UV is ((j, i) + 0.5) / S.
    frags = texel_fragments(atlas)
    fid = np.asarray(frags.face_id)
    np.testing.assert_array_equal(fid >= 0, chart)
    corners = atlas.faces[np.maximum(fid, 0)]
    uv = np.einsum("hwk,hwkc->hwc", np.asarray(frags.bary), atlas.uvs[corners])
    ii, jj = np.nonzero(chart)
    np.testing.assert_allclose(uv[ii, jj], (np.stack([jj, ii], -1) + 0.5) / SIZE, atol=1e-4)
    _, dist, _ = trimesh.proximity.closest_point(sphere_bake["mesh"], frags.position[chart][::50])
    assert dist.max() < 1e-5  # texel positions lie on the mesh
    # Seen texels carry the views' colour there (the vertex colours interpolated), up to
    # resampling: exactly where a view sees the texel head-on, blurred a little at grazing views.
    truth = np.einsum(
        "hwk,hwkc->hwc", np.asarray(frags.bary), colours[atlas.source_vertex[corners]]
    )
    err = np.abs(tex - truth).max(-1)
    assert err[seen].mean() < 0.002 and err[seen & (res.weight > 0.1)].max() < 0.02
    # Unseen chart texels (the bottom): the nearest painted colour, not the fill (mid grey),
    # so much closer to the truth than the fill is.
    unseen = chart & ~seen
    assert np.abs(tex[unseen] - 0.5).max(-1).mean() > 0.05
    assert err[unseen].mean() < 0.5 * np.abs(truth[unseen] - 0.5).max(-1).mean()
    np.testing.assert_array_equal(res.weight[~seen], 0.0)
    # the unseen texels some view sees are the grazing ones (cos < min_cos)
    assert res.visible[seen].all() and seen.sum() / (res.visible & chart).sum() > 0.9


def test_no_background_at_seams(sphere_bake):
    res = sphere_bake["result"]
    chart, tex = res.chart, res.texture
    # Every texel of the first ring around the charts is a mix of its chart neighbours.
    ring = ndimage.binary_dilation(chart, np.ones((3, 3))) & ~chart
    ii, jj = np.nonzero(ring)
    padded = np.pad(np.where(chart[..., None], tex, np.nan), ((1, 1), (1, 1), (0, 0)))
    padded[0, :] = padded[-1, :] = padded[:, 0] = padded[:, -1] = np.nan
    near = np.stack([padded[ii + 1 + di, jj + 1 + dj] for di in (-1, 0, 1) for dj in (-1, 0, 1)])
    lo, hi = np.nanmin(near, 0), np.nanmax(near, 0)
    assert ring.sum() > 1000 and np.all((tex[ii, jj] >= lo - 1e-5) & (tex[ii, jj] <= hi + 1e-5))
    # The whole dilated band keeps the object's colours (never the white/black background),
    # and the gaps beyond it hold the mean chart colour.
    band = ndimage.binary_dilation(chart, np.ones((3, 3)), SETTINGS.dilate)
    lo, hi = tex[chart].min(0), tex[chart].max(0)
    assert np.all((tex[band] >= lo - 1e-5) & (tex[band] <= hi + 1e-5))
    gap = np.broadcast_to(tex[chart].mean(0), tex[~band].shape)
    np.testing.assert_allclose(tex[~band], gap, atol=1e-5)


def test_occluded_box_gets_no_paint():
    """A small box inside a big one is hidden from every view: weight 0, `fill` colour."""
    outer = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    inner = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    mesh = trimesh.Trimesh(
        np.concatenate([outer.vertices, inner.vertices]),
        np.concatenate([outer.faces, inner.faces + len(outer.vertices)]),
    )
    colours = np.concatenate([colour(outer.vertices), np.tile([[1.0, 0.0, 0.0]], (8, 1))])
    views, _ = render_colours(cameras(4), mesh.vertices, mesh.faces, colours)
    atlas, _ = unwrap(mesh, SETTINGS)
    fill = atlas_colors(atlas, colours)
    res = jax.tree.map(np.asarray, bake(atlas, cameras(4), views, fill, SETTINGS))
    fid = np.asarray(texel_fragments(atlas).face_id)
    inner_texels = fid >= len(outer.faces)
    outer_texels = (fid >= 0) & ~inner_texels
    assert inner_texels.sum() > 500
    assert not res.seen[inner_texels].any() and np.all(res.weight[inner_texels] == 0)
    red = np.broadcast_to([1.0, 0.0, 0.0], (inner_texels.sum(), 3))
    np.testing.assert_allclose(res.texture[inner_texels], red, atol=1e-5)
    # The outer box's sides and top are seen (the bottom is below every camera).
    assert res.seen[outer_texels].mean() > 0.7
    # The same bake with depth_tolerance large enough to see through the box paints it.
    loose = dataclasses.replace(SETTINGS, depth_tolerance=1.0)
    leak = np.asarray(bake(atlas, cameras(4), views, fill, loose).seen)
    assert leak[inner_texels].mean() > 0.3


def test_glb_and_obj_export(sphere_bake, tmp_path):
    atlas = sphere_bake["atlas"]
    image = to_uint8(sphere_bake["result"].texture)
    mesh = textured_trimesh(atlas, image)
    path = export_glb(mesh, str(tmp_path / "out" / "mesh.glb"))
    assert_valid_glb(path)
    assert sorted(os.listdir(tmp_path / "out")) == ["mesh.glb"]  # no temporary left behind
    scene = trimesh.load(path, process=False)
    assert len(scene.geometry) == 1
    (back,) = scene.geometry.values()  # (force="mesh" would recompute the normals)
    assert back.faces.shape == atlas.faces.shape
    np.testing.assert_allclose(back.visual.uv[:, 0], atlas.uvs[:, 0], atol=1e-6)
    np.testing.assert_allclose(1.0 - back.visual.uv[:, 1], atlas.uvs[:, 1], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(back.visual.material.baseColorTexture)[..., :3], image)
    # Z-up -> Y-up: (x, y, z) -> (x, z, -y), normals too (the coarse GLB's rotation).
    np.testing.assert_array_equal(export.Z_UP_TO_Y_UP, prior_mesh.Z_UP_TO_Y_UP)
    expect = atlas.vertices[:, [0, 2, 1]] * np.array([1, 1, -1])
    np.testing.assert_allclose(back.vertices, expect, atol=1e-6)
    normals = atlas.normals[:, [0, 2, 1]] * [1, 1, -1]
    np.testing.assert_allclose(back.vertex_normals, normals, atol=1e-5)

    obj = export_obj(mesh, str(tmp_path / "obj"), name="thing")
    files = sorted(os.listdir(tmp_path / "obj"))
    assert "thing.obj" in files and "thing.mtl" in files
    png = [f for f in files if f.endswith(".png")]
    assert len(png) == 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "obj" / png[0]))[..., :3], image)
    back = trimesh.load(obj, force="mesh", process=False)
    assert len(back.faces) == len(atlas.faces)
    np.testing.assert_array_equal(np.asarray(back.visual.material.image)[..., :3], image)
    # OBJ UVs come back per vertex as written (v up); look them up by position.
    tri = np.asarray(back.vertices)[back.faces]
    np.testing.assert_allclose(tri, expect[atlas.faces], atol=1e-6)
    uv = np.asarray(back.visual.uv)[back.faces]
    flipped = np.stack([atlas.uvs[:, 0], 1 - atlas.uvs[:, 1]], -1)[atlas.faces]
    np.testing.assert_allclose(uv, flipped, atol=1e-6)


def test_decimation_before_unwrap():
    mesh = trimesh.creation.icosphere(subdivisions=3)  # 1280 faces
    atlas, base = unwrap(mesh, TextureSettings(size=64, padding=1, max_faces=400))
    assert len(base.faces) <= 400 and len(atlas.faces) == len(base.faces)
    np.testing.assert_allclose(atlas.vertices, base.vertices[atlas.source_vertex], atol=1e-6)
    assert atlas.uvs.min() >= 0 and atlas.uvs.max() <= 1


@pytest.mark.parametrize(
    "bad",
    [
        dict(size=8),
        dict(unwrapper="blender"),
        dict(padding=-1),
        dict(max_faces=10),
        dict(cos_power=-1.0),
        dict(min_cos=1.0),
        dict(silhouette_erode=-1),
        dict(depth_tolerance=-0.1),
        dict(view_weights=(0.0, 0.0)),
        dict(view_weights=(1.0, -1.0)),
        dict(dilate=-2),
    ],
)
def test_settings_validation(bad):
    with pytest.raises(UserError, match="texture settings"):
        TextureSettings(**bad)


def test_bake_input_errors(sphere_bake):
    atlas, cams, views = sphere_bake["atlas"], sphere_bake["cams"], sphere_bake["views"]
    with pytest.raises(UserError, match="views"):
        bake(atlas, cams, views[..., 0])
    with pytest.raises(UserError, match="cameras"):
        bake(atlas, cams, views[:3])
    with pytest.raises(UserError, match="view_weights"):
        bake(atlas, cams, views, settings=TextureSettings(size=SIZE, view_weights=(1.0, 2.0)))
    with pytest.raises(UserError, match="fill"):
        bake(atlas, cams, views, fill=np.zeros((3, 3)))
    with pytest.raises(UserError, match="up="):
        export_glb(textured_trimesh(atlas, np.zeros((4, 4, 3), np.uint8)), "/tmp/x.glb", up="x")
