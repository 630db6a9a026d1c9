"""The coarse 3D prior (P1): Shap-E in JAX, loading the published diffusers pipeline folders.

    from nd3d_jax.prior import load_shap_e
    shap_e = load_shap_e("weights/shap-e-img2img")
    latents = shap_e.sample_latents(jax.random.key(0), image=image)
    meshes = shap_e.coarse_mesh(latents)

`python -m nd3d_jax.prior` runs it from the command line (coarse GLB / PLY, preview, timings).
"""

from nd3d_jax.prior.shap_e import FieldSettings, ShapE, load_shap_e

__all__ = ["FieldSettings", "ShapE", "load_shap_e"]
