"""A small byte-level CLIP BPE tokenizer written locally (no download): for the demo and tests.

The 256 byte symbols, each also with the end-of-word mark (512 tokens), then merges that make
each word of `WORDS` (the caption template "a photo of a {category}" and every category of the
synthetic data sets) one token, then `<|startoftext|>` (`BOS`) and `<|endoftext|>` (`EOS`,
also the padding token). Any other text falls back to about one token per character, which is
all a tiny randomly initialised CLIP needs; a synthetic caption is 7 tokens with BOS and EOS,
so it keeps its category word at the demo's text length of 16.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

# The caption template's words and the categories of `data_pipelines.synthetic` (Pix3D's nine
# and the extra OmniObject3D-like ones); tests check the list covers them.
WORDS = (
    "photo", "of", "bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool",
    "wardrobe", "lamp", "vase", "mug",
)  # fmt: skip


def _merges(words=WORDS) -> list[tuple[str, str]]:
    """Left-to-right merge chains, one per word (`w o r d</w>` -> `wo`, `wor`, `word</w>`),
    ordered by step so that no word's chain is pre-empted by a later step of another's."""
    chains = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        chains.append([(("".join(symbols[:i])), symbols[i]) for i in range(1, len(symbols))])
    merges, seen = [], set()
    for step in range(max(len(c) for c in chains)):
        for chain in chains:
            if step < len(chain) and chain[step] not in seen:
                seen.add(chain[step])
                merges.append(chain[step])
    return merges


def _vocab() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    for a, b in _merges():
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


# 512 byte symbols + one token per merge + BOS + EOS (the tiny CLIP preset must agree)
VOCAB_SIZE = 512 + len(_merges()) + 2
BOS, EOS = VOCAB_SIZE - 2, VOCAB_SIZE - 1


def write_tiny_tokenizer(folder: str) -> str:
    """Saves the tokenizer files (`CLIPTokenizer.save_pretrained`) into `folder`."""
    from transformers import CLIPTokenizer

    CLIPTokenizer(vocab=_vocab(), merges=_merges()).save_pretrained(str(folder))
    return str(folder)


def is_current(folder: str) -> bool:
    """Whether `folder` holds this version of the tiny tokenizer (same vocabulary and merges
    in its `tokenizer.json`)."""
    try:
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            model = json.load(f)["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model.get("vocab") == _vocab() and merges == _merges()


def ensure_tiny_tokenizer(folder: str) -> str:
    """`folder` holding the current tiny tokenizer: written when missing or stale (an older
    vocabulary), through a temporary folder so a reader never sees half the files."""
    if is_current(folder):
        return folder
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny_tokenizer_", dir=parent)
    write_tiny_tokenizer(tmp)
    if os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process wrote it at the same time
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_current(folder):
            raise
    return folder
