"""Flax Linen modules, one family a file."""
