"""MaxSim late interaction (ColBERT; Khattab & Zaharia 2020).

S = Q·Cᵀ over the token embeddings of one layer (L2-normalised by default), text a the query, text b the document;
score = Σ_i max_j S[i, j] over the query tokens. The explanation is the full matrix S, each query token's argmax
document token (the alignment) and its contribution max_j S[i, j] (the contributions sum to the score).
Options: a skiplist of document tokens (punctuation, as in ColBERT), special tokens on/off, query and document
towers (the API's `model` and `model_b`). No backward pass.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..encoders.base import l2
from ..errors import SimattrError
from ..explanation import Explanation
from ..options import Cli, Option, Options, boolean, one_of
from .common_options import set_options
from . import _setbased as sb


def maxsim_batch(Q: Tensor, Qmask: Optional[Tensor], C: Tensor, Cmask: Optional[Tensor], backend: str = "auto"):
    """Batched MaxSim over padded token embeddings: (scores [B], values [B, S_q], index [B, S_q]).

    Q [B|1, S_q, D] query tokens, C [B|1, S_d, D] document tokens (normalise them first for cosine MaxSim),
    masks [B|1, S] bool (None: all tokens). A batch of 1 is broadcast: one query against many documents.
    values[b, i] = max over unmasked j of <Q[b, i], C[b, j]> (0 for masked query tokens), index the lowest such j
    (-1 when masked); scores = Σ_i values. `backend`: auto, torch, cpp or triton (see simattr.ops.maxsim)."""
    values, index = ops.maxsim(Q, C, Qmask, Cmask, backend=backend)
    return values.sum(-1), values, index


def explain_maxsim_many(enc_a, enc_b, texts_a, texts_b, *, layer: Optional[int] = None, normalize: bool = True,
                        skiplist=False, special: bool = True, truncate: bool = False, backend: str = "auto",
                        units: str = "token", aggregate: str = "max", batch_size: int = 64) -> list:
    """One Explanation per pair (texts a: queries, texts b: documents; one text on a side is broadcast)."""
    sb.check_backend(backend)
    if units not in ("token", "word"):
        raise SimattrError(f"units must be 'token' or 'word' for maxsim, got {units!r}")

    def batch(sides):
        A, B = sides.A, sides.B
        Q = l2(A.embeddings) if normalize else A.embeddings
        C = l2(B.embeddings) if normalize else B.embeddings
        qmask = A.mask.clone()
        cmask = B.mask.clone()
        for k, t in enumerate(A.tokens):
            if not special:
                qmask[k, : t.length] &= ~torch.tensor(t.special, device=qmask.device)
        for k, t in enumerate(B.tokens):
            drop = torch.tensor(sb.skip_mask(t, skiplist), device=cmask.device)
            if not special:
                drop |= torch.tensor(t.special, device=cmask.device)
            cmask[k, : t.length] &= ~drop
        if not bool(qmask.any(-1).all()):
            raise SimattrError("a query has no token left (special=False on a text of special tokens only?)")
        if not bool(cmask.any(-1).all()):
            raise SimattrError("a document has no token left after the skiplist")
        which = ops.choose_maxsim_backend(Q.device.type, Q.dtype, backend, ops.mask_density(Q, C, qmask, cmask))
        return (Q, C, qmask, cmask, which) + tuple(maxsim_batch(Q, qmask, C, cmask, backend=which))

    def pair(state, sides, k, ta, tb, seconds):
        Q, C, qmask, cmask, which, scores, values, index = state
        q = Q[sides.ia(k), : ta.length].double()
        c = C[sides.ib(k), : tb.length].double()
        S = (q @ c.T).cpu().numpy()
        la, lb = list(ta.tokens), list(tb.tokens)
        v = values[k, : ta.length].double().cpu().numpy()
        idx = index[k, : ta.length].cpu().numpy()
        qm = qmask[sides.ia(k), : ta.length].cpu().numpy()
        pairs = [(i, int(idx[i])) for i in range(ta.length) if qm[i] and idx[i] >= 0]
        n_q = int(qm.sum())
        score = float(v.sum())
        # a meanmaxsim model (sentence-transformers' similarity_fn_name) scores the mean over the query's tokens
        mean = sides.A.layer is None and getattr(enc_a, "similarity_fn", None) == "meanmaxsim"
        share = 1.0 / max(1, n_q) if mean else 1.0
        settings = {"layer": "the model's token vectors" if sides.A.layer is None else sides.A.layer,
                    "normalize": normalize, "similarity": "meanmaxsim" if mean else "maxsim",
                    "skiplist": skiplist if not isinstance(skiplist, (set, frozenset)) else sorted(skiplist),
                    "special": special, "backend": which, "query": "a", "model_a": enc_a.describe(),
                    "model_b": enc_b.describe() if enc_b is not enc_a else "same",
                    "dtype": str(Q.dtype).replace("torch.", ""), "device": str(Q.device)}
        extras = {"scores": {"maxsim": score, "mean": score / max(1, n_q)},
                  "alignment": sb.pairs_list(la, lb, S, pairs),
                  "contributions": [share * float(x) if m else 0.0 for x, m in zip(v, qm)],
                  "document_mask": cmask[sides.ib(k), : tb.length].cpu().tolist(),
                  "token_info": sb.token_info(ta, tb), "seconds": seconds}
        return Explanation(method="maxsim", matrix=S, tokens_a=la, tokens_b=lb, score=score * share,
                           settings=settings, extras=extras)

    return sb.explain_pairs(enc_a, enc_b, texts_a, texts_b, layer=layer, truncate=truncate, batch_size=batch_size,
                            units=units, aggregate=aggregate, batch=batch, pair=pair)


def explain_maxsim(enc_a, enc_b, text_a: str, text_b: str, *, layer: Optional[int] = None, normalize: bool = True,
                   skiplist=False, special: bool = True, truncate: bool = False, backend: str = "auto",
                   units: str = "token", aggregate: str = "max") -> Explanation:
    """MaxSim of query a against document b; see the module docstring."""
    return explain_maxsim_many(enc_a, enc_b, [text_a], [text_b], layer=layer, normalize=normalize, skiplist=skiplist,
                               special=special, truncate=truncate, backend=backend, units=units,
                               aggregate=aggregate)[0]


def _skiplist(v):
    if isinstance(v, bool) or v == "punctuation" or (isinstance(v, (list, tuple, set, frozenset)) and
                                                      all(isinstance(t, str) for t in v)):
        return v
    raise ValueError("True (punctuation, as ColBERT), False, or a collection of token strings")


OPTIONS = Options("maxsim", [
    Option("normalize", True, "cosine MaxSim (token embeddings L2-normalised) instead of raw dot products", boolean,
           cli=Cli(flag="--no-normalize", action="store_false", dest="normalize",
                   help="raw dot products instead of cosines")),
    Option("skiplist", False, "skip document tokens: True = punctuation (ColBERT), or a collection of token strings",
           _skiplist, cli=Cli(action="store_true")),
    Option("special", True, "[CLS]/[SEP] take part in the matching", boolean, cli=Cli(action="boolean")),
    Option("backend", "auto", "MaxSim kernel (auto: where measured faster)", one_of(*ops.MAXSIM_BACKENDS)),
] + set_options(aggregate="max"))
