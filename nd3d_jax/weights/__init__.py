"""Import of Hugging Face / diffusers safetensors checkpoints from local folders (no downloads).

Every loader returns `(module, params)` from a `save_pretrained` folder or from a folder written
by `python -m nd3d_jax.weights.convert`; a folder that cannot become the module's tree raises
`WeightImportError` naming every missing, unexpected and mis-shaped key.
"""

from nd3d_jax.weights.clip import CLIPTokenizer, load_clip
from nd3d_jax.weights.diffusers import load_t2i_adapter, load_unet, load_vae
from nd3d_jax.weights.io import WeightImportError
from nd3d_jax.weights.resnet import load_resnet
from nd3d_jax.weights.shap_e import load_shap_e

__all__ = [
    "CLIPTokenizer",
    "WeightImportError",
    "load_clip",
    "load_resnet",
    "load_shap_e",
    "load_t2i_adapter",
    "load_unet",
    "load_vae",
]
