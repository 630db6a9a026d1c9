"""`python -m nd3d_jax.benchmark render`: rasterizer frames/s beside trimesh ray casting.

Depth images of a torus with 10k and 100k faces at 256 and 512 px, one pinhole view; the
reference casts one ray per pixel centre with trimesh (rtree) in the same run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import trimesh
from trimesh.ray import has_embree

from nd3d_jax.benchmark import BenchOptions, Record, device_name, measure
from nd3d_jax.render.camera import look_at, pinhole
from nd3d_jax.render.rasterize import rasterize


def _torus(num_faces: int) -> trimesh.Trimesh:
    minor = max(3, int(round((num_faces / 8) ** 0.5)))
    major = max(3, num_faces // (2 * minor))
    return trimesh.creation.torus(0.6, 0.25, major_sections=major, minor_sections=minor)


def ray_cast_depth(mesh, c2w: np.ndarray, focal: float, size: int) -> np.ndarray:
    """Reference depth image: one trimesh ray per pixel centre of a square pinhole view
    (OpenGL pose `c2w`, focal length in pixels), 0 where no face is hit."""
    jj, ii = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    d = np.stack([(jj - size / 2) / focal, -(ii - size / 2) / focal, -np.ones_like(jj)], -1)
    d = d.reshape(-1, 3) @ c2w[:3, :3].T
    origins = np.broadcast_to(c2w[:3, 3], d.shape)
    loc, ray, _ = mesh.ray.intersects_location(origins, d, multiple_hits=False)
    depth = np.zeros(size * size)
    depth[ray] = (loc - c2w[:3, 3]) @ -c2w[:3, 2]
    return depth.reshape(size, size)


def _bench(mesh: trimesh.Trimesh, size: int, opts: BenchOptions) -> Record:
    v = jax.device_put(jnp.asarray(mesh.vertices, jnp.float32))
    f = jax.device_put(jnp.asarray(mesh.faces, jnp.int32))
    c2w = look_at(jnp.array([1.2, -1.8, 1.0]))
    cam = pinhole(c2w, size, size, fov=0.8)
    fn = jax.jit(lambda v, f: rasterize(cam, v, f).depth)
    median = measure(lambda: fn(v, f), warmup=opts.warmup, repeats=opts.repeats)
    focal, pose = float(cam.focal), np.asarray(c2w)
    ref_repeats = opts.repeats if opts.quick else 1  # ray casting 512^2 px takes seconds
    ref = measure(lambda: ray_cast_depth(mesh, pose, focal, size), warmup=0, repeats=ref_repeats)
    return Record(
        name=f"rasterize_depth_{size}px_{round(len(mesh.faces) / 1000)}k",
        device=device_name(),
        shape=f"{size}x{size}, {len(mesh.faces)} faces",
        median_s=median,
        repeats=opts.repeats,
        throughput=1.0 / median,
        throughput_unit="frames/s",
        reference=f"trimesh ray casting ({'embree' if has_embree else 'rtree'}, same image)",
        reference_median_s=ref,
    )


def suite(opts: BenchOptions) -> list[Record]:
    sizes, face_counts = (
        ((64, 128), (1000, 4000)) if opts.quick else ((256, 512), (10_000, 100_000))
    )
    return [_bench(_torus(n), size, opts) for n in face_counts for size in sizes]
