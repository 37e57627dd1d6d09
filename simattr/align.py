"""Alignment post-processing for any token-by-token matrix (IJ, BiLRP, MaxSim, BERTScore, OT plans).

- `max_align(M)`: pairs (i, j) that are each other's best match (row argmax and column argmax agree).
- `flow_align(M)`: an exact optimal-transport plan over the matrix turned into costs (max(M) − M), then
  thresholded: (i, j) is aligned when the plan moves at least `threshold` of the smaller of the two tokens' masses.
- `word_groups(labels)`, `aggregate(M, groups_a, groups_b, how)`: subword-to-word aggregation (sum, mean, max).
- `special_mask(labels)`, `trim_special(M, ...)`: drop special tokens ([CLS], [SEP], <s>, </s>, ...).
- `postprocess(explanation, units="word", how="sum", trim=True)`: a new Explanation with all of the above.
"""
from __future__ import annotations

import copy
import re
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import SimattrError
from .transport import sinkhorn_log

_SPECIAL = re.compile(r"^(\[(CLS|SEP|PAD|MASK|UNK|Q|D)\]|<s>|</s>|<pad>|<unk>|<mask>|<cls>|<sep>|<\|[a-z_]+\|>)$")


def _matrix(m) -> np.ndarray:
    if hasattr(m, "detach"):
        m = m.detach().cpu().double().numpy()
    m = np.asarray(m, dtype=float)
    if m.ndim != 2 or 0 in m.shape:
        raise SimattrError(f"alignment needs a non-empty 2-D matrix, got shape {m.shape}")
    return m


def max_align(matrix) -> list:
    """Mutual-argmax pairs [(i, j), ...] sorted by i (lowest index on ties, like np.argmax)."""
    m = _matrix(matrix)
    row = m.argmax(1)
    col = m.argmax(0)
    return [(int(i), int(j)) for i, j in enumerate(row) if col[j] == i]


def argmax_align(matrix, axis: int = 1) -> list:
    """Every row's (axis=1) or column's (axis=0) best partner: [(i, j), ...]."""
    m = _matrix(matrix)
    if axis == 1:
        return [(int(i), int(j)) for i, j in enumerate(m.argmax(1))]
    return [(int(i), int(j)) for j, i in enumerate(m.argmax(0))]


def emd_plan(cost, mass_a=None, mass_b=None, solver: str = "auto") -> np.ndarray:
    """Exact optimal-transport plan for a cost matrix (POT's network simplex when installed; otherwise the
    assignment problem for equal uniform masses, else a small-ε log-domain Sinkhorn)."""
    C = _matrix(cost)
    n, m = C.shape
    a = np.full(n, 1.0 / n) if mass_a is None else np.asarray(mass_a, dtype=float)
    b = np.full(m, 1.0 / m) if mass_b is None else np.asarray(mass_b, dtype=float)
    if a.shape != (n,) or b.shape != (m,) or (a < 0).any() or (b < 0).any() or a.sum() <= 0 or b.sum() <= 0:
        raise SimattrError("masses must be non-negative vectors with positive sums matching the matrix")
    a, b = a / a.sum(), b / b.sum()
    if solver in ("auto", "pot"):
        try:
            import ot
            return np.asarray(ot.emd(a, b, C))
        except ImportError:
            if solver == "pot":
                raise SimattrError("solver 'pot' needs the POT package (pip install pot)") from None
    if n == m and np.allclose(a, 1.0 / n) and np.allclose(b, 1.0 / m):
        from scipy.optimize import linear_sum_assignment
        r, c = linear_sum_assignment(C)
        plan = np.zeros_like(C)
        plan[r, c] = 1.0 / n
        return plan
    scale = max(float(np.abs(C).max()), 1e-12)
    plan, _ = sinkhorn_log(torch.tensor(C / scale)[None], torch.tensor(a)[None], torch.tensor(b)[None],
                           eps=1e-3, max_iter=20000, tol=1e-9)
    return plan[0].numpy()


def flow_align(matrix, threshold: float = 0.5, mass_a=None, mass_b=None, similarity: bool = True,
               solver: str = "auto"):
    """Pairs linked by an exact transport plan over the matrix: (pairs [(i, j)], plan [n, m]).

    similarity=True: the matrix holds similarities (cost = max(M) − M); False: it holds costs already.
    A pair is kept when plan[i, j] ≥ threshold · min(mass_a[i], mass_b[j]) (masses normalised to 1)."""
    m = _matrix(matrix)
    if not 0 < threshold <= 1:
        raise SimattrError(f"threshold must be in (0, 1], got {threshold!r}")
    cost = m.max() - m if similarity else m
    plan = emd_plan(cost, mass_a, mass_b, solver=solver)
    n, k = m.shape
    a = np.full(n, 1.0 / n) if mass_a is None else np.asarray(mass_a, float) / np.sum(mass_a)
    b = np.full(k, 1.0 / k) if mass_b is None else np.asarray(mass_b, float) / np.sum(mass_b)
    cap = np.minimum(a[:, None], b[None, :])
    keep = (plan >= threshold * cap - 1e-12) & (cap > 0) & (plan > 0)
    pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(keep))]
    return pairs, plan


def special_mask(labels: Sequence[str]) -> list:
    """Heuristic special-token flags from token strings ([CLS], [SEP], <s>, </s>, ...)."""
    return [bool(_SPECIAL.match(str(t))) for t in labels]


def word_groups(labels: Sequence[str], special: Optional[Sequence[bool]] = None,
                word_ids: Optional[Sequence] = None) -> list:
    """Token indices per word. With `word_ids` (the tokenizer's, None for special tokens) they decide; otherwise
    WordPiece '##' continuations and SentencePiece/BPE word-start markers ('▁', 'Ġ') do. Special tokens stay alone."""
    special = special_mask(labels) if special is None else list(special)
    bpe = any(str(x).startswith(("▁", "Ġ")) for x in labels)
    groups = []
    for s, tok in enumerate(labels):
        if special[s] or not groups or special[groups[-1][-1]]:
            groups.append([s])
            continue
        if word_ids is not None:
            same = word_ids[s] is not None and word_ids[s] == word_ids[groups[-1][-1]]
        elif bpe:  # SentencePiece / byte BPE: a marker starts a word, anything else continues it
            same = not str(tok).startswith(("▁", "Ġ"))
        else:  # WordPiece: '##' continues a word
            same = str(tok).startswith("##")
        if same:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def join_label(pieces: Sequence[str]) -> str:
    out = ""
    for p in pieces:
        p = str(p)
        if p.startswith("##"):
            out += p[2:]
        elif p.startswith(("Ġ", "▁")):
            out += (" " if out else "") + p[1:]
        else:
            out += p
    return out


_HOW = {"sum": np.sum, "mean": np.mean, "max": np.max}


def aggregate(matrix, groups_a: Sequence[Sequence[int]], groups_b: Sequence[Sequence[int]], how: str = "sum"):
    """[len(groups_a), len(groups_b)] matrix: each block of the input reduced by `how` (sum, mean or max)."""
    if how not in _HOW:
        raise SimattrError(f"aggregation must be one of {', '.join(_HOW)}, got {how!r}")
    m = _matrix(matrix)
    f = _HOW[how]
    out = np.empty((len(groups_a), len(groups_b)))
    for u, ga in enumerate(groups_a):
        rows = m[list(ga)]
        for v, gb in enumerate(groups_b):
            out[u, v] = f(rows[:, list(gb)])
    return out


def trim_special(matrix, special_a: Sequence[bool], special_b: Sequence[bool]):
    """(matrix without special rows/columns, kept row indices, kept column indices)."""
    m = _matrix(matrix)
    ka = [i for i, s in enumerate(special_a) if not s]
    kb = [j for j, s in enumerate(special_b) if not s]
    if not ka or not kb:
        raise SimattrError("trimming special tokens would leave no token on one side")
    return m[np.ix_(ka, kb)], ka, kb


def postprocess(explanation, units: str = "word", how: str = "sum", trim: bool = True):
    """A copy of `explanation` with special tokens trimmed and/or subwords aggregated into words.

    Uses the token flags the set-based methods store (`extras['token_info']`); for other explanations they are
    recovered from the token strings. The original token indices of every row/column go to extras['groups_a/b']."""
    if units not in ("token", "word"):
        raise SimattrError(f"units must be 'token' or 'word', got {units!r}")
    info = explanation.extras.get("token_info", {})
    la, lb = list(explanation.tokens_a), list(explanation.tokens_b)
    sa = info.get("special_a") or special_mask(la)
    sb = info.get("special_b") or special_mask(lb)
    if units == "word":
        ga = word_groups(la, sa, info.get("word_ids_a"))
        gb = word_groups(lb, sb, info.get("word_ids_b"))
    else:
        ga, gb = [[i] for i in range(len(la))], [[j] for j in range(len(lb))]
    if trim:
        ga = [g for g in ga if not all(sa[i] for i in g)]
        gb = [g for g in gb if not all(sb[j] for j in g)]
        if not ga or not gb:
            raise SimattrError("trimming special tokens would leave no token on one side")
    m = aggregate(explanation.matrix, ga, gb, how)
    out = copy.copy(explanation)
    out.matrix = m
    out.tokens_a = [join_label([la[i] for i in g]) for g in ga]
    out.tokens_b = [join_label([lb[j] for j in g]) for g in gb]
    out.extras = {**explanation.extras, "groups_a": ga, "groups_b": gb, "aggregation": how if units == "word" else None}
    out.settings = {**explanation.settings, "postprocess": {"units": units, "how": how, "trim": trim}}
    return out


def alignment(explanation, kind: str = "max", **kwargs) -> list:
    """Aligned token pairs of any explanation as dicts (i, j, token_a, token_b, value): kind 'max' (mutual argmax)
    or 'flow' (thresholded exact transport plan; kwargs go to `flow_align`)."""
    m = explanation.matrix
    if kind == "max":
        pairs = max_align(m)
    elif kind == "flow":
        pairs, _ = flow_align(m, **kwargs)
    else:
        raise SimattrError(f"alignment kind must be 'max' or 'flow', got {kind!r}")
    return [{"i": i, "j": j, "token_a": explanation.tokens_a[i], "token_b": explanation.tokens_b[j],
             "value": float(m[i, j])} for i, j in pairs]
