"""Reference inputs r at the input of block `layer` (the path starts there)."""
from __future__ import annotations

import torch
from torch import Tensor

from .encoders import Encoder, Tokens
from .errors import SimattrError

KEYWORDS = ("pad", "zero")


def _text_ids(encoder: Encoder, text: str, tokens: Tokens) -> Tensor:
    """Token ids of a reference text fitted to the input's length: pads inserted before (or tokens cut before)
    the final special token, so both sequences keep their special tokens in place."""
    if not text.strip():
        raise SimattrError("reference text is empty")
    held = encoder.prompt and not encoder.include_prompt  # a prompt held as context is in the reference too
    ids = encoder.tokenizer((encoder.prompt if held else "") + text, truncation=False, verbose=False)["input_ids"]
    special = set(encoder.tokenizer.all_special_ids) - {getattr(encoder.tokenizer, "unk_token_id", None)}
    if all(i in special for i in ids):
        raise SimattrError(f"reference text {text[:40]!r} has no token: the tokenizer makes only special tokens of "
                           f"it (control or zero-width characters?); use reference='pad' for that")
    tail = []
    if tokens.expansion is not None:  # a query's expansion tokens are the model's: kept after the fitted text
        n = int(tokens.expansion.sum())
        tail = tokens.input_ids[0, tokens.length - n:].tolist() if n else []
    S = tokens.length - len(tail)
    pad = encoder.tokenizer.pad_token_id
    if len(ids) < S:
        if pad is None:
            raise SimattrError("the tokenizer has no pad token to fit the reference text to the input's length")
        ids = ids[:-1] + [pad] * (S - len(ids)) + ids[-1:]
    elif len(ids) > S:
        ids = ids[:S - 1] + ids[-1:]
    return torch.tensor([ids + tail], device=tokens.input_ids.device)


def reference(encoder: Encoder, tokens: Tokens, layer: int, spec=None, x: Tensor = None) -> Tensor:
    """Reference hidden states [1, S, H]; a prompt held as context (`Tokens.held`) keeps its input states in every
    reference, so the path leaves it where it is and none of the similarity is given to it.

    spec: None or "pad" (non-special tokens replaced by the pad token, through the embedding module and the
    blocks below `layer`), "zero" (the zero vector), any other string (a reference text, fitted to the input's
    length and taken through the model like the input), a tensor [S, H] or [1, S, H], or a callable
    (tokens, x) -> tensor.
    """
    if x is None:
        x = encoder.hidden(tokens, layer)
    r = _reference(encoder, tokens, layer, spec, x)
    held = tokens.held
    if any(held):
        r = r.clone()
        idx = torch.tensor([k for k, h in enumerate(held) if h], device=r.device)
        r[:, idx] = x[:, idx].to(r.dtype)
    return r


def _reference(encoder: Encoder, tokens: Tokens, layer: int, spec, x: Tensor) -> Tensor:
    if spec is None or (isinstance(spec, str) and spec == "pad"):
        return encoder.hidden(tokens, layer, input_ids=encoder.pad_ids(tokens))
    if isinstance(spec, str) and spec == "zero":
        return torch.zeros_like(x)
    if isinstance(spec, str):
        return encoder.hidden(tokens, layer, input_ids=_text_ids(encoder, spec, tokens))
    if callable(spec) and not isinstance(spec, (Tensor, type)):
        try:
            spec = spec(tokens, x)
        except Exception as exc:  # noqa: BLE001  (the caller's function)
            raise SimattrError(f"the reference function raised {type(exc).__name__}: {exc}") from None
        if not isinstance(spec, Tensor):
            raise SimattrError(f"the reference function must return a tensor [S, H] or [1, S, H], got "
                               f"{type(spec).__name__}")
    if isinstance(spec, Tensor):
        r = spec.to(x.device, x.dtype)
        if r.dim() == 2:
            r = r.unsqueeze(0)
        if r.shape != x.shape:
            raise SimattrError(f"reference tensor has shape {tuple(spec.shape)}; expected {tuple(x.shape[1:])} "
                               f"(tokens x hidden size at layer {layer})")
        if not torch.isfinite(r).all():
            raise SimattrError("reference tensor holds NaN or Inf")
        return r
    raise SimattrError(f"unknown reference {_short(spec)}: use 'pad', 'zero', a reference text, a tensor or a "
                       f"function (tokens, x) -> tensor")


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else f"{type(v).__name__} {text[:40]}..."
