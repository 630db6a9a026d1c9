"""tfds builders that read a manual download of Pix3D or OmniObject3D and write ArrayRecord."""
