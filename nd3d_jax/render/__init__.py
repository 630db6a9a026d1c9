"""Pure-JAX rendering: cameras, the tiled rasterizer, rendered maps and previews."""

from nd3d_jax.render.camera import Camera, look_at, orthographic, pinhole, project
from nd3d_jax.render.maps import color_image, depth_map, grid_layout, normal_map, rasterize_views
from nd3d_jax.render.rasterize import Fragments, interpolate, rasterize

__all__ = [
    "Camera",
    "Fragments",
    "color_image",
    "depth_map",
    "grid_layout",
    "interpolate",
    "look_at",
    "normal_map",
    "orthographic",
    "pinhole",
    "project",
    "rasterize",
    "rasterize_views",
]
