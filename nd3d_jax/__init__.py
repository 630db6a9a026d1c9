"""nd3d_jax: NeuroDiff3D in JAX/Flax (image + text -> textured 3D object)."""

__version__ = "0.1.0"
