"""Shared pieces of the set-based methods (maxsim, bertscore, ot): batched token embeddings of both sides, token
weights (uniform or idf from a user corpus), skiplists, and the per-pair bookkeeping of an Explanation."""
from __future__ import annotations

import math
import time
import string
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..align import postprocess
from ..embed import TokenBatch, token_embeddings
from ..encoders import prompt_extras
from ..errors import SimattrError, check_finite

PUNCTUATION = frozenset(string.punctuation) | frozenset("“”‘’«»–—…")


def as_list(texts, side: str) -> list:
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (set, frozenset, dict)) or not hasattr(texts, "__iter__") or \
            isinstance(texts, (bytes, bytearray)):
        raise SimattrError(f"texts {side} must be a string or a list of strings (an ordered sequence), got "
                           f"{type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise SimattrError(f"no texts on side {side}")
    for t in texts:
        if not isinstance(t, str):
            raise SimattrError(f"text {side} must be a string, got {type(t).__name__}")
        if not t.strip():
            raise SimattrError(f"text {side} is empty")
    return texts


def broadcast_pairs(texts_a, texts_b):
    """(texts_a, texts_b, n_pairs): one text on a side is paired with every text of the other side."""
    a, b = as_list(texts_a, "a"), as_list(texts_b, "b")
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise SimattrError(f"{len(a)} texts a and {len(b)} texts b: give equal numbers, or one text on a side")
    return a, b, max(len(a), len(b))


@dataclass
class Sides:
    A: TokenBatch  # the texts of side a (1 or N)
    B: TokenBatch
    n: int  # pairs

    def ia(self, k):
        return 0 if len(self.A) == 1 else k

    def ib(self, k):
        return 0 if len(self.B) == 1 else k


def embed_sides(enc_a, enc_b, texts_a, texts_b, layer, truncate, batch_size=64) -> Sides:
    a, b, n = broadcast_pairs(texts_a, texts_b)
    A = token_embeddings(enc_a, a, layer=layer, truncate=truncate, batch_size=batch_size)
    B = token_embeddings(enc_b, b, layer=layer, truncate=truncate,
                         batch_size=batch_size)
    if A.embeddings.shape[-1] != B.embeddings.shape[-1]:
        raise SimattrError(f"the two towers give token embeddings of different widths {A.embeddings.shape[-1]} and "
                           f"{B.embeddings.shape[-1]}")
    if A.embeddings.device != B.embeddings.device:
        raise SimattrError(f"the two towers are on different devices ({A.embeddings.device}, {B.embeddings.device})")
    return Sides(A, B, n)


def explain_pairs(enc_a, enc_b, texts_a, texts_b, *, layer, truncate, batch_size, units: str, aggregate: str,
                  batch: Callable, pair: Callable) -> list:
    """The set-based methods' one loop over pairs: both sides' texts embedded in padded batches (`embed_sides`),
    `batch(sides)` computes the whole batch at once (its state), `pair(state, sides, k, ta, tb, seconds)` makes
    pair k's Explanation from it (token matrix), aggregated to words when units="word". `seconds` is the pair's
    share of the batch's time."""
    t0 = time.perf_counter()
    sides = embed_sides(enc_a, enc_b, texts_a, texts_b, layer, truncate, batch_size)
    state = batch(sides)
    seconds = (time.perf_counter() - t0) / sides.n
    out = []
    for k in range(sides.n):
        ta, tb = sides.A.tokens[sides.ia(k)], sides.B.tokens[sides.ib(k)]
        ex = pair(state, sides, k, ta, tb, seconds)
        check_finite(ex.matrix, f"the {ex.method} matrix of pair {k}")
        check_finite(ex.score, f"the {ex.method} score of pair {k}")
        if units == "word":  # the prompt's units are words too
            ex = postprocess(ex, units="word", how=aggregate, trim=False)
            ex.extras.update(prompt_extras(ta, tb, ex.extras["groups_a"], ex.extras["groups_b"]))
        else:
            ex.extras.update(prompt_extras(ta, tb))
        out.append(ex)
    return out


# ---------------------------------------------------------------------- token weights
def idf_table(tokenizer, corpus: Sequence[str], max_length: Optional[int] = None) -> dict:
    """idf[id] = log((N + 1) / (df(id) + 1)) over the documents' token ids (special tokens included, as in
    bert_score.utils.get_idf_dict); ids never seen get log(N + 1) (key None)."""
    corpus = [c for c in corpus if isinstance(c, str)]
    if not corpus:
        raise SimattrError("the idf corpus holds no text")
    df = Counter()
    for doc in corpus:
        ids = tokenizer(doc.strip(), truncation=True, max_length=max_length or tokenizer.model_max_length)["input_ids"]
        df.update(set(ids))
    N = len(corpus)
    table = {i: math.log((N + 1) / (c + 1)) for i, c in df.items()}
    table[None] = math.log(N + 1)
    return table


def resolve_idf(encoder, idf, references: Sequence[str]):
    """None/False: no idf; True: idf over the references (texts b, as bert_score does); a list of texts: idf over
    that corpus; a dict {token id or token string: weight}: those weights (missing ids get the largest)."""
    if idf is None or idf is False:
        return None
    tok = encoder.tokenizer
    if idf is True:
        return idf_table(tok, references, encoder.max_length)
    if isinstance(idf, dict):
        if not idf:
            raise SimattrError("idf is an empty dict: give token weights, or idf=None for uniform weights")
        table = {}
        for k, v in idf.items():
            table[_idf_key(tok, k)] = _idf_weight(k, v)
        table.setdefault(None, max(table.values()))
        return table
    if isinstance(idf, (list, tuple)):
        return idf_table(tok, list(idf), encoder.max_length)
    raise SimattrError("idf must be True (idf over the texts b), a list of corpus texts or a dict of weights")


def _idf_key(tok, k):
    """A token id (an integer, or a token string of the vocabulary) of an idf dict; None: the default weight."""
    if k is None:
        return None
    if hasattr(k, "__index__") and not isinstance(k, bool):
        return k.__index__()
    if isinstance(k, str):
        i = tok.convert_tokens_to_ids(k)
        unk = getattr(tok, "unk_token_id", None)
        if i is None or (i == unk and k != getattr(tok, "unk_token", None)):
            raise SimattrError(f"idf key {k!r} is not a token of the tokenizer's vocabulary (keys are token "
                               f"strings such as {tok.convert_ids_to_tokens(2000)!r}, or token ids)")
        return i
    raise SimattrError(f"idf keys are token strings or token ids, not {type(k).__name__} ({k!r})")


def _idf_weight(k, v) -> float:
    try:
        w = float(v)
    except (TypeError, ValueError):
        raise SimattrError(f"idf weight of {k!r} must be a number, got {v!r}") from None
    if not math.isfinite(w) or w < 0:
        raise SimattrError(f"idf weight of {k!r} must be a finite number >= 0, got {v!r}")
    return w


def token_weights(encoder, tokens, table: Optional[dict], zero_special: bool = True) -> Tensor:
    """Weight per token: idf from `table`, or 1; [CLS]/[SEP] (the tokenizer's cls/sep ids) get 0 without idf, as
    in bert_score (with idf they get the corpus idf, which is 0 as they occur in every document)."""
    ids = tokens.input_ids[0].tolist()
    if table is None:
        special = {encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id} - {None} if zero_special else set()
        w = [0.0 if i in special else 1.0 for i in ids]
    else:
        w = [table.get(i, table[None]) for i in ids]
    return torch.tensor(w, dtype=torch.float64)


def skip_mask(tokens, skiplist) -> list:
    """True for tokens to skip: skiplist True = punctuation tokens; a collection of token strings = those."""
    if not skiplist:
        return [False] * tokens.length
    if skiplist is True or skiplist == "punctuation":
        return [(not sp) and len(t.lstrip("#")) > 0 and all(ch in PUNCTUATION for ch in t.lstrip("#Ġ▁"))
                for t, sp in zip(tokens.tokens, tokens.special)]
    words = set(skiplist)
    return [t in words for t in tokens.tokens]


def token_info(ta, tb) -> dict:
    return {"special_a": list(ta.special), "special_b": list(tb.special),
            "word_ids_a": list(ta.word_ids), "word_ids_b": list(tb.word_ids)}


def pad_rows(rows: Sequence[Tensor], value=0.0) -> Tensor:
    S = max(r.shape[0] for r in rows)
    out = rows[0].new_full((len(rows), S) + tuple(rows[0].shape[1:]), value)
    for k, r in enumerate(rows):
        out[k, : r.shape[0]] = r
    return out


def check_backend(backend):
    from ..ops import MAXSIM_BACKENDS
    if backend not in MAXSIM_BACKENDS:
        raise SimattrError(f"backend must be one of {', '.join(MAXSIM_BACKENDS)}, got {backend!r}")


def pairs_list(tokens_a, tokens_b, matrix, pairs, **columns) -> list:
    out = []
    for n, (i, j) in enumerate(pairs):
        row = {"i": int(i), "j": int(j), "token_a": tokens_a[i], "token_b": tokens_b[j], "value": float(matrix[i, j])}
        for k, v in columns.items():
            row[k] = float(v[n])
        out.append(row)
    return out
