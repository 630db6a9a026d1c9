"""Generation end to end: image + text -> textured mesh (see `generator.py`).

from nd3d_jax.pipeline import generate
result = generate(image="chair.png", text="a wooden chair", params="out/demo")
result.mesh            # trimesh.Trimesh with UVs and its baked texture
result.views, result.refined, result.coarse, result.seconds   # the intermediate results
"""

from __future__ import annotations

import ml_collections

from nd3d_jax.pipeline.generator import Generator, Result

_CACHE: dict = {}


def generate(
    image: str | None = None,
    text: str = "",
    *,
    params: str | None = None,
    coarse_mesh: str | None = None,
    seed: int | None = None,
    config: ml_collections.ConfigDict | str | None = None,
) -> Result:
    """One object with a `Generator` built once per (config, params) and reused. `config`: a
    ConfigDict, a `FILE.py[:args]` spec, or None for `configs/generate.py`'s paper settings."""
    from nd3d_jax.config_cli import load_config

    if config is None:
        from configs.generate import get_config

        config = get_config()
    elif isinstance(config, str):
        config = load_config(config)
    if params is not None:
        config = ml_collections.ConfigDict(config.to_dict())
        config.params = params
    key = (config.to_json(),)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Generator(config)
    return _CACHE[key].generate(image=image, text=text, coarse_mesh=coarse_mesh, seed=seed)


__all__ = ["Generator", "Result", "generate"]
