"""Texture baking (paper stage M4): UV unwrapping, back-projection of the K generated views
onto the atlas, textured rendering and textured GLB/OBJ export."""

from nd3d_jax.texture.atlas import (
    TexelFragments,
    TextureSettings,
    UVAtlas,
    decimate,
    texel_fragments,
    unwrap,
)
from nd3d_jax.texture.bake import (
    BakeResult,
    atlas_colors,
    bake,
    bake_arrays,
    coverage,
    transfer_colors,
)
from nd3d_jax.texture.export import export_glb, export_obj, textured_trimesh
from nd3d_jax.texture.render import render_textured, render_views, sample_bilinear

__all__ = [
    "BakeResult",
    "TexelFragments",
    "TextureSettings",
    "UVAtlas",
    "atlas_colors",
    "bake",
    "bake_arrays",
    "coverage",
    "decimate",
    "export_glb",
    "export_obj",
    "render_textured",
    "render_views",
    "sample_bilinear",
    "texel_fragments",
    "textured_trimesh",
    "transfer_colors",
    "unwrap",
]
