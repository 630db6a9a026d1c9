"""Geometry of the refinement stage (P2): tet grid, marching tetrahedra, refinement, meshes."""

from nd3d_jax.geometry.extract import SurfaceBudgetError, extract_mesh, mesh_from_sdf, to_trimesh
from nd3d_jax.geometry.marching_tets import (
    MarchingTetsResult,
    marching_tetrahedra,
    marching_tetrahedra_on_grid,
)
from nd3d_jax.geometry.mesh_ops import (
    MeshError,
    export_mesh,
    load_mesh,
    sample_faces,
    sample_key_points,
    sample_surface,
)
from nd3d_jax.geometry.refine import RefineSettings, refine_mesh
from nd3d_jax.geometry.tet_grid import TetGrid, build_tet_grid, deform_vertices

__all__ = [
    "MarchingTetsResult",
    "MeshError",
    "RefineSettings",
    "SurfaceBudgetError",
    "TetGrid",
    "build_tet_grid",
    "deform_vertices",
    "export_mesh",
    "extract_mesh",
    "load_mesh",
    "marching_tetrahedra",
    "marching_tetrahedra_on_grid",
    "mesh_from_sdf",
    "refine_mesh",
    "sample_faces",
    "sample_key_points",
    "sample_surface",
    "to_trimesh",
]
