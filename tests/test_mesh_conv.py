"""MeshConv f_struc: face features, edge neighbours, masks, and a hand-computed layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
from flax import linen as nn

from nd3d_jax.models.mesh_conv import MeshConv, face_features, face_neighbours, sample_faces


def test_face_features_by_hand():
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0]], float)
    f = face_features(v, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(f[0], [0, 0, 1, 1.0, 2 / 3, 1 / 3, 0], atol=1e-6)


def test_neighbours_of_a_tetrahedron_and_a_boundary():
    tet = trimesh.creation.box()  # closed: every face has 3 edge neighbours
    nb = face_neighbours(tet.faces)
    assert (nb >= 0).all()
    adj = {tuple(sorted(p)) for p in tet.face_adjacency.tolist()}
    for i, row in enumerate(nb):
        for j in row:
            assert tuple(sorted((i, j))) in adj
    quad = np.array([[0, 1, 2], [0, 2, 3]])  # open: shared edge 0-2 only
    np.testing.assert_array_equal(face_neighbours(quad), [[-1, -1, 1], [0, -1, -1]])


def test_sampling_is_every_tenth_face_and_pads():
    mesh = trimesh.creation.icosphere(subdivisions=4)  # 5120 faces: the paper's 1 in 10
    out = sample_faces(mesh.vertices, mesh.faces)
    assert out["features"].shape == (512, 7) and out["neighbours"].shape == (512, 3, 7)
    feats = face_features(mesh.vertices, mesh.faces)
    np.testing.assert_allclose(out["features"], feats[::10], atol=1e-6)
    assert out["face_mask"].sum() == 512 and out["neighbour_mask"].sum() == 512 * 3
    small = sample_faces(mesh.vertices, mesh.faces[:100])
    assert small["face_mask"].sum() == 100 and (small["features"][100:] == 0).all()


def test_layer_by_hand_and_masked_faces_do_not_count():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 7)).astype(np.float32)
    nb = rng.normal(size=(2, 6, 3, 7)).astype(np.float32)
    nm = (rng.random((2, 6, 3)) > 0.3).astype(np.float32)
    fm = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    module = MeshConv()
    params = nn.unbox(module.init(jax.random.PRNGKey(0), x, nb, nm, fm))["params"]
    params = jax.tree.map(lambda a: a + 0.1, params)  # non-zero biases
    out = np.asarray(module.apply({"params": params}, x, nb, nm, fm))
    assert out.shape == (2, 128)
    p = jax.tree.map(np.asarray, params)
    s = (nm[..., None] * nb).sum(-2)
    d = (nm[..., None] * np.abs(nb - x[..., None, :])).sum(-2)
    h = x @ p["w_self"]["kernel"] + p["w_self"]["bias"] + s @ p["w_sum"]["kernel"]
    h = np.maximum(h + d @ p["w_diff"]["kernel"], 0)
    want = np.stack([h[0, :4].mean(0), h[1].mean(0)])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # garbage in padded faces and masked neighbours changes nothing
    x2, nb2 = x.copy(), nb.copy()
    x2[0, 4:] = 1e3
    nb2[nm == 0] = -1e3
    np.testing.assert_allclose(module.apply({"params": params}, x2, nb2, nm, fm), out, atol=1e-6)
    # neighbour order does not matter (order-invariant kernel)
    perm = module.apply({"params": params}, x, nb[:, :, ::-1], nm[:, :, ::-1], fm)
    np.testing.assert_allclose(perm, out, atol=1e-5)


def test_mesh_to_f_struc_end_to_end():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    batch = {k: jnp.asarray(v)[None] for k, v in sample_faces(mesh.vertices, mesh.faces).items()}
    module = MeshConv()
    params = module.init(jax.random.PRNGKey(1), *batch.values())
    f_struc = jax.jit(module.apply)(params, *batch.values())
    assert f_struc.shape == (1, 128) and np.isfinite(np.asarray(f_struc)).all()
