"""Instructions as learned word embeddings: the vocabulary comes from the store, nothing is downloaded.

A vocabulary is the sorted distinct lower-cased words of a store's instructions after the
unknown-word token (id 0); `Tokenizer` turns a batch of instructions into the (ids, offsets)
an `nn.EmbeddingBag` takes. The vocabulary travels in a model's card, so a checkpoint maps
the same words to the same rows wherever it is loaded.
"""

from __future__ import annotations

import re

import torch

UNK = "<unk>"
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str | None) -> list[str]:
    return _WORD.findall((text or "").lower())


def build_vocab(instructions: list[str | None]) -> list[str]:
    """Sorted distinct words of the instructions, after the unknown-word token (id 0)."""
    return [UNK, *sorted({w for text in instructions for w in words(text)})]


class Tokenizer:
    def __init__(self, vocab: list[str]) -> None:
        self.vocab = list(vocab)
        self._ids = {w: i for i, w in enumerate(self.vocab)}

    def __call__(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat ids, offsets) for `nn.EmbeddingBag`; an empty instruction is the unknown word."""
        ids, offsets = [], []
        for text in texts:
            offsets.append(len(ids))
            ids.extend([self._ids.get(w, 0) for w in words(text)] or [0])
        return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)
