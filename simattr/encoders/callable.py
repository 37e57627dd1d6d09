"""A tower from plain callables (`CallableEncoder`): the user's own embedding and encoding functions."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from .base import BaseEncoder, l2

class CallableEncoder(BaseEncoder):
    """A user-defined encoder from plain callables.

    embed(input_ids [1, S], attention_mask [1, S]) -> x [1, S, H]   (the input of the attributed function)
    encode(x [N, S, H], attention_mask [N, S]) -> embedding [N, D]
    `layer` must be 0 (the callables define where attribution happens).
    """

    def __init__(self, tokenizer, embed: Callable, encode: Callable, max_length: int = 512, name: str = "callable"):
        super().__init__(tokenizer, name, max_length)
        self._embed, self._encode = embed, encode
        self.model, self.head, self.pooling, self.normalized = None, None, "custom", False
        self._device = None

    @property
    def num_layers(self) -> int:
        return 1  # the callables are one function: attribution at layer 0 only

    @property
    def device(self):
        return torch.device("cpu") if self._device is None else self._device

    @property
    def dtype(self):
        return torch.float32

    def _forward_args(self):
        return {}

    def describe(self):
        return {"name": self.name, "architecture": "callable", "pooling": "custom", "layers": 1,
                "max_length": self.max_length, "normalized": False}

    @torch.no_grad()
    def hidden(self, tokens, layer, input_ids=None):
        self.check_layer(layer)
        ids = tokens.input_ids if input_ids is None else input_ids
        return self._embed(ids, tokens.attention_mask).detach()

    def function(self, tokens, layer, normalize, own_norm=True):
        self.check_layer(layer)

        def f(x):
            emb = self._encode(x, tokens.attention_mask.expand(x.shape[0], -1))
            if normalize:
                emb = l2(emb)
            return emb
        return f

    @contextlib.contextmanager
    def prepared(self):
        yield self

    def copy_as(self, dtype):
        return None  # its callables fix their own precision


