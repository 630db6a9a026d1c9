"""Orientation repair on meshes with real data's faults: inverted, mixed, open, duplicated."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh

from data_pipelines.mesh_repair import edge_counts, repair_orientation, weld
from data_pipelines.shape_samples import (
    closest_points,
    condition_mesh,
    inside,
    unit_cube_transform,
    winding_number,
)
from data_pipelines.synthetic.shapes import make_object, with_faults
from nd3d_jax.render.camera import look_at, pinhole
from nd3d_jax.render.maps import normal_map, rasterize_views

# boxes with touching parts (non-manifold once welded), cylinders and spheres, thin boards
CASES = [("chair", 0), ("bookcase", 1), ("vase", 2), ("lamp", 3), ("misc", 4)]
FAULTS = [("inverted",), ("mixed",), ("holes",), ("duplicates",), ("mixed", "holes", "duplicates")]


@functools.cache
def clean(category: str, seed: int) -> trimesh.Trimesh:
    mesh = make_object(category, seed)
    centre, scale = unit_cube_transform(mesh.vertices)
    mesh.vertices = (mesh.vertices - centre) * scale
    return mesh


@functools.cache
def queries(category: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points near the surface and in the box, mask of those > 1% of the size away from the
    clean surface, the clean shape's exact inside flags)."""
    mesh = clean(category, seed)
    rng = np.random.default_rng(seed)
    near = trimesh.sample.sample_surface(mesh, 1000, seed=seed)[0]
    points = np.concatenate([near + rng.normal(0, 0.03, near.shape),
                             rng.uniform(-0.6, 0.6, (1000, 3))])  # fmt: skip
    dist = closest_points(mesh, points)[0]
    return points, dist > 0.01, inside(mesh, points, exact=True)


def _face_normals(vertices, faces) -> dict:
    """{sorted welded vertex triple: unit normal}."""
    normals = trimesh.Trimesh(vertices, faces, process=False).face_normals
    return {tuple(sorted(f)): n for f, n in zip(faces.tolist(), normals, strict=True)}


@pytest.mark.parametrize("faults", FAULTS, ids="+".join)
@pytest.mark.parametrize("category,seed", CASES)
def test_repaired_faulty_meshes_have_the_clean_signs_and_outward_normals(category, seed, faults):
    base = clean(category, seed)
    bad = with_faults(base, faults, seed)
    repaired = repair_orientation(bad)
    points, far, reference = queries(category, seed)
    # SDF signs: those of the clean shape away from the surface; fast = exact everywhere
    signs = inside(repaired.mesh, points)
    assert (signs == reference)[far].mean() >= 0.99
    np.testing.assert_array_equal(signs, inside(repaired.mesh, points, exact=True))
    # every kept face has the clean (outward) normal: on the welded and the original vertices
    clean_normals = _face_normals(*weld(base.vertices, base.faces))
    got = _face_normals(repaired.vertices, repaired.faces)
    assert set(got) <= set(clean_normals)
    assert min(np.dot(n, clean_normals[k]) for k, n in got.items()) > 0.999
    np.testing.assert_allclose(repaired.mesh.face_normals,
                               trimesh.Trimesh(repaired.vertices, repaired.faces).face_normals,
                               atol=1e-9)  # fmt: skip
    # what was found
    flips = bool({"inverted", "mixed"} & set(faults))
    assert ("orientation repaired" in repaired.warnings()) == flips == (repaired.flipped > 0)
    kept = len(base.faces) - max(1, len(base.faces) // 100) * ("holes" in faults)
    assert len(repaired.faces) == kept  # 1% of the faces taken out, 5% repeated
    assert repaired.duplicates == max(1, kept // 20) * ("duplicates" in faults)
    if "holes" in faults:
        assert repaired.boundary_edges > 0 and any("open mesh" in w for w in repaired.warnings())
    assert repaired.inconsistent_edges == 0
    # the raw inverted mesh: w ~ -1 inside, so the old rule (w > 1/2) called every point
    # outside; |w| > 1/2 needs no repair for it
    if faults == ("inverted",):
        assert not (winding_number(bad.vertices, bad.faces, points) > 0.5).any()
        np.testing.assert_array_equal(inside(bad, points, exact=True), reference)


def test_clean_shapes_are_left_as_they_are():
    for category, seed in CASES:
        base = clean(category, seed)
        repaired = repair_orientation(base)
        assert repaired.flipped == repaired.duplicates == 0
        np.testing.assert_array_equal(repaired.mesh.faces, base.faces)
        np.testing.assert_array_equal(repaired.mesh.visual.vertex_colors, base.visual.vertex_colors)


def test_edge_counts_on_hand_made_meshes():
    box = trimesh.creation.box()
    assert edge_counts(box.faces) == (0, 0, 0)
    assert edge_counts(box.faces[1:]) == (3, 0, 0)  # one triangle missing: a 3-edge hole
    flipped = box.faces.copy()
    flipped[0] = flipped[0, ::-1]
    assert edge_counts(flipped) == (0, 0, 3)  # its three edges walked twice the same way
    # two boxes sharing one edge: four faces on it once welded
    other = box.copy().apply_translation([1.0, 1.0, 0.0])
    both = trimesh.util.concatenate([box, other])
    assert edge_counts(weld(both.vertices, both.faces)[1]) == (0, 1, 0)


def _mobius(n: int = 24) -> trimesh.Trimesh:
    t = 2 * np.pi * np.arange(n) / n
    rows = []
    for w in (-0.3, 0.3):
        r = 1 + w * np.cos(t / 2)
        rows.append(np.stack([r * np.cos(t), r * np.sin(t), w * np.sin(t / 2)], 1))
    a, b = np.arange(n), np.arange(n) + n  # the two edges of the strip
    a1, b1 = np.roll(a, -1), np.roll(b, -1)
    a1[-1], b1[-1] = b[0], a[0]  # half a turn: the strip closes on its other edge
    faces = np.concatenate([np.stack([a, a1, b1], 1), np.stack([a, b1, b], 1)])
    return trimesh.Trimesh(np.concatenate(rows), faces, process=False)


def test_non_orientable_and_nested_parts():
    strip = repair_orientation(_mobius())
    assert strip.inconsistent_edges >= 1 and strip.boundary_edges > 0
    assert "orientation not consistent (non-orientable faces)" in strip.warnings()
    # a closed part inside another, facing inward: |w| alone would call it outside (w = 1 - 1);
    # rays cannot reach it, its volume orients it
    outer, inner = trimesh.creation.box((2, 2, 2)), trimesh.creation.box((0.5, 0.5, 0.5))
    inner.faces = inner.faces[:, ::-1]
    nested = trimesh.util.concatenate([outer, inner])
    assert not inside(nested, [[0.0, 0.0, 0.0]], exact=True)[0]
    repaired = repair_orientation(nested)
    assert repaired.flipped == 12 and repaired.mesh.volume == pytest.approx(8 + 0.125)
    assert inside(repaired.mesh, [[0.0, 0.0, 0.0]])[0]


@functools.cache
def _render():
    eyes = 1.8 * np.array([[1, 0.3, 0.4], [-0.3, 1, 0.5], [-1, -0.4, -0.3], [0.2, -1, 0.8]])
    cams = pinhole(look_at(jnp.asarray(eyes, jnp.float32)), 48, 48, fov=0.9)

    @jax.jit
    def maps(v, f, face_mask):
        frags = rasterize_views(cams, v, f, face_mask)
        return jax.vmap(lambda fr: normal_map(fr, v, f))(frags), frags.mask

    return maps


def normal_maps(category, seed, faults, size=1024, repair=True):
    """The normal maps N (4 views) of the repaired mesh's condition mesh, as the model renders
    them (smooth vertex normals); padded to `size` faces and vertices so one compile serves."""
    mesh = clean(category, seed)
    if faults:
        mesh = with_faults(mesh, faults, seed)
        mesh = repair_orientation(mesh).mesh if repair else mesh
    v, f, _ = condition_mesh(mesh, 512)
    vertices, faces = np.zeros((size, 3), np.float32), np.zeros((size, 3), np.int32)
    vertices[: len(v)], faces[: len(f)] = v, f
    normals, mask = _render()(vertices, faces, np.arange(size) < len(f))
    return np.asarray(normals), np.asarray(mask)


@pytest.mark.parametrize("faults", FAULTS, ids="+".join)
def test_normal_maps_equal_the_clean_shapes(faults):
    want, want_mask = normal_maps("chair", 0, ())
    got, mask = normal_maps("chair", 0, faults)
    if "holes" not in faults:
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_allclose(got, want, atol=1e-5)
        if faults == ("inverted",):  # unrepaired, every normal points in
            raw, _ = normal_maps("chair", 0, faults, repair=False)
            np.testing.assert_allclose(raw, -want, atol=1e-5)
        return
    # through a hole the inside shows: the rest is equal
    both = mask & want_mask
    assert both.sum() >= 0.99 * want_mask.sum()
    same = (np.einsum("...c,...c", got, want) > 0.999)[both]
    assert same.mean() >= 0.97
