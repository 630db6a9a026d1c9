"""A small byte-level CLIP BPE tokenizer written locally (no download): for the demo and tests.

520 tokens: the 256 byte symbols, each with the end-of-word mark, a few merges, then
`<|startoftext|>` (518) and `<|endoftext|>` (519). Text tokenises to roughly one token per
character, which is all a tiny randomly initialised CLIP needs.
"""

from __future__ import annotations

VOCAB_SIZE = 520
BOS, EOS = 518, 519


def write_tiny_tokenizer(folder: str) -> str:
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + 256 for i, c in enumerate(chars)})
    pieces = [("c", "h"), ("ch", "a"), ("cha", "i"), ("chai", "r</w>"), ("t", "a"), ("ta", "b")]
    for a, b in pieces:
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=pieces).save_pretrained(str(folder))
    return str(folder)
