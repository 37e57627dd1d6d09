"""Attribution units: which tokens form one column of G (a subword token, a whole word, or a user span)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .encoders import Tokens
from .errors import SimattrError

UNIT_KINDS = ("token", "word")


@dataclass
class Units:
    matrix: torch.Tensor  # [U, S] 0/1: unit u holds token s
    labels: list  # one string per unit
    groups: list  # token indices per unit

    def __len__(self):
        return len(self.groups)


def _join(pieces):
    out = ""
    for p in pieces:
        if p.startswith("##"):
            out += p[2:]
        elif p.startswith("Ġ") or p.startswith("▁"):
            out += (" " if out else "") + p[1:]
        else:
            out += p
    return out


def make_units(tokens: Tokens, units="token") -> Units:
    """Build the unit matrix.

    units: "token" (every token its own unit, special tokens included), "word" (word pieces merged by the
    tokenizer's word ids; special tokens stay single units), or a list of spans: each span a list of token
    indices or a (start, stop) pair, indices into the tokens as the result shows them; tokens not covered by any
    span form one unit each. A prompt held as context (`Tokens.held`) is in no unit: the path does not move it,
    and the result leaves it out (and span indices do not count it).
    """
    S = tokens.length
    held = tokens.held
    if isinstance(units, str):
        if units == "token":
            groups = [[s] for s in range(S)]
        elif units == "word":
            groups, seen = [], {}
            for s, w in enumerate(tokens.word_ids):
                if w is None:
                    groups.append([s])
                elif w in seen and seen[w] == len(groups) - 1 and groups[-1][-1] == s - 1:
                    groups[-1].append(s)
                else:
                    seen[w] = len(groups)
                    groups.append([s])
        else:
            raise SimattrError(f"unknown units {units!r}; choose 'token', 'word' or give a list of spans")
    else:
        groups = _spans(units, S, held)
    groups = [kept for g in groups if (kept := [s for s in g if not held[s]])]
    m = torch.zeros(len(groups), S)
    for u, g in enumerate(groups):
        m[u, g] = 1.0
    labels = [tokens.tokens[g[0]] if len(g) == 1 else _join([tokens.tokens[s] for s in g]) for g in groups]
    return Units(matrix=m, labels=labels, groups=groups)


def _spans(spans, S, held=None):
    """Unit groups from spans over the tokens as the result shows them: a prompt held as context is not counted
    (span positions are indices into the shown tokens, mapped back to the sequence's positions)."""
    shown = [k for k in range(S) if not (held and held[k])]
    try:
        spans = list(spans)
    except TypeError:
        raise SimattrError("units must be 'token', 'word' or a list of token spans") from None
    groups, used = [], set()
    for sp in spans:
        if isinstance(sp, (str, bytes)) or not hasattr(sp, "__iter__"):
            raise SimattrError(f"span {sp!r} is not a list of token positions or a (start, stop) pair")
        members = list(sp)
        if not all(hasattr(v, "__index__") and not isinstance(v, bool) for v in members):
            raise SimattrError(f"span {sp!r}: token positions must be integers")
        members = [v.__index__() for v in members]
        if isinstance(sp, tuple) and len(members) == 2:
            idx = list(range(members[0], members[1]))
        else:
            idx = members
        if len(set(idx)) != len(idx):
            raise SimattrError(f"span {sp!r} names a token twice")
        n = len(shown)
        if not idx or any(not 0 <= v < n for v in idx):
            held_note = f" (a prompt's {S - n} tokens, held as context, are not counted)" if n < S else ""
            raise SimattrError(f"span {sp!r} is empty or outside the {n} tokens{held_note}")
        idx = [shown[v] for v in idx]
        if used & set(idx):
            raise SimattrError(f"span {sp!r} overlaps another span")
        used |= set(idx)
        groups.append(sorted(idx))
    rest = [[s] for s in shown if s not in used]
    groups = sorted(groups + rest, key=lambda g: g[0])
    return groups
