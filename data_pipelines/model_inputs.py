"""One decoded example -> exactly the model's input fields, the same for every data set.

A grain transform (`ModelInputs`), run in the loader's worker threads after the random flip,
so the training loop only moves arrays to devices. Per example:

  input_ids, attention_mask     int32 (text_length,), (semantic_length,): the caption tokenised
  semantic_ids, semantic_mask   once and sliced to each length (eq 9's semantic encoder reads
                                at most 64 tokens; a cut keeps the end token)
  image                         uint8 (S, S, 3) in [0, 255]: the prepared input photo (the model
                                normalises once, at its edge)
  views                         uint8 (G, G, 3), G = grid_cols * tile_size: the K = rows x cols
                                view grid (OmniObject3D: its renders box-downsampled to the tile
                                size; Pix3D: the photo in slot 0, white elsewhere)
  view_mask                     float32 (K,): which slots hold a real view
  view_cameras/{c2w,focal,principal}  float32 (K, 4, 4), (K,), (K, 2): intrinsics in pixels of
                                one tile (Pix3D: the photo's camera in every slot)
  mesh_*, faces/*               the padded condition mesh and MeshConv's face samples (f_struc)
"""

from __future__ import annotations

import logging
import threading

import grain
import numpy as np

from nd3d_jax.errors import UserError

MESH_FIELDS = ("mesh_vertices", "mesh_faces", "mesh_colors", "mesh_face_mask")
FACE_FIELDS = ("faces/features", "faces/neighbours", "faces/neighbour_mask", "faces/face_mask")
STRING_FIELDS = ("caption", "key", "category", "shape_id")
LOG = logging.getLogger(__name__)


def box_downsample(image: np.ndarray, size: int, what: str = "image") -> np.ndarray:
    """uint8 (S, S, C) -> uint8 (size, size, C): the mean of each (S/size)^2 block, rounded
    (half up). S must be a multiple of `size`."""
    s = image.shape[0]
    if s == size:
        return np.asarray(image, np.uint8)
    if s % size or image.shape[1] != s:
        raise ValueError(f"{what} of shape {image.shape} cannot be box-resized to {size} px")
    f = s // size
    blocks = np.asarray(image, np.int64).reshape(size, f, size, f, image.shape[-1])
    total = blocks.sum((1, 3))
    return ((2 * total + f * f) // (2 * f * f)).astype(np.uint8)


def fit_tokens(tokens, length: int, eos: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """A text's token ids (with its start and end tokens) -> (ids, mask) int32 (length,), as
    tokenising at `length` with padding and truncation gives: a text that runs past `length`
    keeps its first `length - 1` tokens and the end token."""
    tokens = np.asarray(tokens, np.int32)
    ids, mask = np.full((length,), pad, np.int32), np.zeros((length,), np.int32)
    n = min(len(tokens), length)
    ids[:n], mask[:n] = tokens[:n], 1
    if len(tokens) > length:
        ids[-1] = eos
    return ids, mask


class ModelInputs(grain.transforms.Map):
    """Loader example (`loader.to_model_inputs` + flip + `mesh_conv_inputs`) -> model inputs.

    `tokenizer` is an `nd3d_jax.weights.CLIPTokenizer` (or its folder). `keep_strings` also
    passes caption, key, category and shape_id through (evaluation; training batches stay
    numeric).
    """

    def __init__(self, tokenizer, *, text_length: int, semantic_length: int, grid_rows: int,
                 grid_cols: int, tile_size: int, keep_strings: bool = False):  # fmt: skip
        if isinstance(tokenizer, str):
            from nd3d_jax.weights import CLIPTokenizer

            tokenizer = CLIPTokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.text_length, self.semantic_length = text_length, semantic_length
        self.rows, self.cols, self.tile = grid_rows, grid_cols, tile_size
        self.keep_strings = keep_strings
        self.eos, self.pad = int(tokenizer.hf.eos_token_id), int(tokenizer.hf.pad_token_id)
        # transformers' Rust-backed tokenizers are not safe to call from several threads at once
        self._lock = threading.Lock()
        self._warned = False

    def tokenize(self, caption: str) -> dict:
        """Caption -> input_ids/attention_mask (text_length) and semantic_ids/semantic_mask
        (semantic_length): one tokenisation, sliced to each length (a cut keeps the end
        token, as the tokenizer's own truncation does)."""
        with self._lock:
            tokens = self.tokenizer.hf(caption, verbose=False)["input_ids"]
            longest = max(self.text_length, self.semantic_length)
            if len(tokens) > longest and not self._warned:
                self._warned = True
                LOG.warning("captions longer than %d tokens are truncated (warned once), e.g. %r",
                            longest, caption[:80])  # fmt: skip
        text_ids, text_mask = fit_tokens(tokens, self.text_length, self.eos, self.pad)
        sem_ids, sem_mask = fit_tokens(tokens, self.semantic_length, self.eos, self.pad)
        return {"input_ids": text_ids, "attention_mask": text_mask,
                "semantic_ids": sem_ids, "semantic_mask": sem_mask}  # fmt: skip

    def check(self, example: dict) -> None:
        """A `UserError` when the prepared images do not fit the model's grid and tile size
        (call it on one example up front: errors inside the worker threads surface late)."""
        if "views" in example:
            shape = np.shape(example["views"])[:2]
            prepared = shape[1] // self.cols
            if shape != (self.rows * prepared, self.cols * prepared):
                raise UserError(
                    f"prepared view grid of {shape[0]} x {shape[1]} px is not {self.rows} x "
                    f"{self.cols} square tiles: set --config.model.grid_rows and grid_cols to "
                    f"the prepared grid"
                )
            what, size = "a prepared view", prepared
        else:
            what, size = "the input image", np.shape(example["image"])[1]
        if size % self.tile:
            raise UserError(
                f"{what} of {size} px cannot be box-resized to model.tile_size={self.tile} (not "
                f"a divisor): set --config.model.tile_size to a divisor of {size} or prepare "
                f"matching data"
            )

    def views(self, example: dict) -> dict:
        """The K-view grid at the tile size, its mask and its tile cameras."""
        self.check(example)
        k, tile, g = self.rows * self.cols, self.tile, self.cols * self.tile
        if "views" in example:  # OmniObject3D: K renders in a rows x cols grid
            views = np.asarray(example["views"])
            prepared = views.shape[1] // self.cols
            tiles = views.reshape(self.rows, prepared, self.cols, prepared, 3)
            small = [[box_downsample(tiles[r, :, c], tile, "a view")
                      for c in range(self.cols)] for r in range(self.rows)]  # fmt: skip
            grid = np.concatenate([np.concatenate(row, 1) for row in small], 0)
            scale = tile / prepared
            c2w = np.asarray(example["view_cameras/c2w"], np.float32)
            focal = np.asarray(example["view_cameras/focal"], np.float32) * scale
            principal = np.asarray(example["view_cameras/principal"], np.float32) * scale
            view_mask = np.ones((k,), np.float32)
        else:  # Pix3D: the photo in slot 0, white in the others (masked out of the loss)
            image = np.asarray(example["image"])
            grid = np.full((g, g, 3), 255, np.uint8)
            grid[:tile, :tile] = box_downsample(image, tile)
            scale = tile / image.shape[1]
            c2w = np.repeat(np.asarray(example["camera/c2w"], np.float32)[None], k, 0)
            focal = np.full((k,), np.float32(example["camera/focal"]) * scale, np.float32)
            principal = np.repeat(
                np.asarray(example["camera/principal"], np.float32)[None] * scale, k, 0
            )
            view_mask = np.zeros((k,), np.float32)
            view_mask[0] = 1.0
        return {
            "views": grid,
            "view_mask": view_mask,
            "view_cameras/c2w": c2w.astype(np.float32),
            "view_cameras/focal": focal.astype(np.float32),
            "view_cameras/principal": principal.astype(np.float32),
        }

    def map(self, example: dict) -> dict:
        missing = [key for key in MESH_FIELDS + FACE_FIELDS if key not in example]
        if missing:
            raise ValueError(
                f"example lacks {missing}: build the loader with max_faces (the condition mesh)"
            )
        caption = example["caption"]
        caption = caption.decode() if isinstance(caption, bytes) else str(caption)
        out = self.tokenize(caption)
        out["image"] = np.asarray(example["image"], np.uint8)
        out.update(self.views(example))
        for key in MESH_FIELDS + FACE_FIELDS:
            out[key] = np.asarray(example[key])
        if self.keep_strings:
            out.update({key: example[key] for key in STRING_FIELDS if key in example})
        return out


def from_config(config, tokenizer, *, keep_strings: bool = False) -> ModelInputs:
    """`ModelInputs` with the trainer config's model sizes (`config.model`)."""
    m = config.model
    return ModelInputs(tokenizer, text_length=m.text_length, semantic_length=m.semantic_length,
                       grid_rows=m.grid_rows, grid_cols=m.grid_cols, tile_size=m.tile_size,
                       keep_strings=keep_strings)  # fmt: skip
