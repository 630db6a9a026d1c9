"""Synthetic data in the real on-disk layouts of Pix3D and OmniObject3D (no download)."""

from data_pipelines.synthetic.shapes import CATEGORIES, make_object

__all__ = ["CATEGORIES", "make_object"]
