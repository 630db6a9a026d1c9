"""Dataset builders, loaders and the synthetic-data generator (Pix3D, OmniObject3D layouts)."""
