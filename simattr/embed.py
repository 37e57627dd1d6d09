"""Token embeddings of one layer for one or many texts (batched with padding), for the set-based methods.

Layers are numbered like Hugging Face `hidden_states`: 0 is the output of the embedding module, `k` the output of
block `k` (= the input of block `k`, the same numbering as IJ's `layer`), and `num_layers` (the default) the
model's last hidden state. This matches `bert_score`'s `num_layers=k`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from .encoders import CallableEncoder, Encoder, Tokens
from .errors import SimattrError, check_finite


@dataclass
class TokenBatch:
    """N tokenized texts and their token embeddings at one layer, right-padded."""

    tokens: list  # [N] Tokens
    embeddings: Tensor  # [N, S, H]
    mask: Tensor  # [N, S] bool: a real token
    layer: int

    def __len__(self):
        return len(self.tokens)

    def lengths(self) -> list:
        return [t.length for t in self.tokens]

    def row(self, n: int) -> Tensor:
        """Embeddings [S_n, H] of text n without padding."""
        return self.embeddings[n, : self.tokens[n].length]


def default_layer(encoder: Encoder) -> int:
    """The last layer (the model's output tokens); 0 for a CallableEncoder, whose `embed` is the only layer."""
    return 0 if isinstance(encoder, CallableEncoder) else encoder.num_layers


def check_layer(encoder: Encoder, layer) -> int:
    if layer is None:
        return default_layer(encoder)
    top = default_layer(encoder)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= top:
        raise SimattrError(f"layer must be an integer in [0, {top}] (0: embeddings, {top}: last hidden state) for this "
                           f"model, got {layer!r}")
    return layer


@torch.no_grad()
def token_embeddings(encoder: Encoder, texts: Sequence[str], layer: Optional[int] = None, truncate: bool = False,
                     batch_size: int = 64) -> TokenBatch:
    """Token embeddings at `layer` of every text (all its tokens, special tokens included; a prompt only where it
    is shown, `Tokens.held`), padded to one length."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise SimattrError("no texts given")
    if getattr(encoder, "multi_vector", False) and layer is None:
        return _multi_vectors(encoder, texts, truncate)
    layer = check_layer(encoder, layer)
    toks = [encoder.tokenize(t, truncate=truncate) for t in texts]
    rows = []
    model = encoder.model
    training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        for start in range(0, len(toks), max(1, int(batch_size))):
            chunk = toks[start: start + batch_size]
            S = max(t.length for t in chunk)
            ids = torch.stack([_pad(t.input_ids[0], S, encoder.tokenizer.pad_token_id or 0) for t in chunk])
            mask = torch.stack([_pad(t.attention_mask[0], S, 0) for t in chunk])
            if isinstance(encoder, CallableEncoder):
                out = _pad_stack([encoder.hidden(t, 0)[0] for t in chunk], S)
            else:
                extra = {}
                for key in chunk[0].extra:
                    extra[key] = torch.stack([_pad(t.extra[key][0], S, 0) for t in chunk])
                out = _layer_output(encoder, ids, mask, extra, layer)
            for k, t in enumerate(chunk):  # a prompt held as context is not one of the text's tokens
                keep = [s for s, h in enumerate(t.held) if not h]
                rows.append(out[k, keep] if len(keep) < t.length else out[k, : t.length])
    finally:
        if model is not None:
            model.train(training)
    return _batch([t.without_held() for t in toks], rows, layer, f"the token embeddings at layer {layer}")


def _batch(toks: list, rows: list, layer, what: str) -> TokenBatch:
    """The texts' rows [S_n, H] padded into one TokenBatch with its mask of real tokens."""
    S = max(t.length for t in toks)
    emb = _pad_stack(rows, S)
    check_finite(emb, what)
    mask = torch.zeros(len(toks), S, dtype=torch.bool, device=emb.device)
    for k, t in enumerate(toks):
        mask[k, : t.length] = True
    return TokenBatch(tokens=toks, embeddings=emb, mask=mask, layer=layer)


def _multi_vectors(encoder, texts, truncate: bool) -> TokenBatch:
    """A multi-vector model's own token vectors (its projection, scoring mask and normalisation: what its encode
    gives), one row per scored token; layer None in the batch marks them."""
    toks, rows = [], []
    with encoder.prepared():
        for text in texts:
            t = encoder.tokenize(text, truncate=truncate)
            rows.append(encoder.token_vectors(t))
            toks.append(t.select(t.scoring))
    return _batch(toks, rows, None, "the model's token vectors")


def _layer_output(encoder: Encoder, ids: Tensor, mask: Tensor, extra: dict, layer: int) -> Tensor:
    if layer == encoder.num_layers:
        out = encoder.model(input_ids=ids, attention_mask=mask, **extra)
        return (out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state).detach()
    return encoder.capture(layer, lambda: encoder.model(input_ids=ids, attention_mask=mask, **extra))


def _pad(v: Tensor, S: int, value) -> Tensor:
    if v.shape[0] == S:
        return v
    return torch.cat([v, v.new_full((S - v.shape[0],), value)])


def _pad_stack(rows, S: int) -> Tensor:
    H = rows[0].shape[-1]
    out = rows[0].new_zeros(len(rows), S, H)
    for k, r in enumerate(rows):
        out[k, : r.shape[0]] = r
    return out


def same_layer_width(a: TokenBatch, b: TokenBatch):
    if a.embeddings.shape[-1] != b.embeddings.shape[-1]:
        raise SimattrError(f"the two towers give token embeddings of different widths {a.embeddings.shape[-1]} and "
                           f"{b.embeddings.shape[-1]}")
    if a.embeddings.device != b.embeddings.device:
        raise SimattrError(f"the two towers are on different devices ({a.embeddings.device}, {b.embeddings.device})")


def token_labels(tokens: Tokens) -> list:
    return list(tokens.tokens)
