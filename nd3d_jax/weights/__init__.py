"""Import of Hugging Face / diffusers safetensors checkpoints from local folders (no downloads)."""

from nd3d_jax.weights.clip import CLIPTokenizer, load_clip
from nd3d_jax.weights.io import WeightImportError
from nd3d_jax.weights.resnet import load_resnet

__all__ = ["CLIPTokenizer", "WeightImportError", "load_clip", "load_resnet"]
