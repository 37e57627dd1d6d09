"""Optimal-transport alignment (Word Mover's Distance over contextual token embeddings; Kusner et al. 2015,
Zhao et al. 2019 MoverScore).

Cost C[i, j] = 1 − cos(a_i, b_j) between the token embeddings of one layer; masses uniform over the (non-special)
tokens or proportional to idf weights. The transport plan P is the explanation (matrix), Σ P∘C the score (the
transport cost, WMD: lower = more similar). Solvers: "emd" (exact, POT's network simplex), "sinkhorn" (our own
entropic solver in the log domain, batched over pairs with padding masks, on any device), "auto" (emd if POT is
installed, else sinkhorn). No backward pass.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..encoders.base import l2
from ..errors import SimattrError
from ..transport import emd_pot, pot_available, sinkhorn_log
from ..explanation import Explanation
from ..options import Cli, Option, Options, boolean, fraction, integer, one_of, positive_number
from .common_options import idf_weights, set_options
from . import _setbased as sb

SOLVERS = ("auto", "emd", "sinkhorn")


def ot_batch(A: Tensor, Amask: Tensor, wa: Tensor, B: Tensor, Bmask: Tensor, wb: Tensor, solver: str = "sinkhorn",
             eps: float = 0.01, max_iter: int = 2000, tol: float = 1e-7):
    """Batched OT between padded token sets: (plans [N, n, m], costs [N, n, m], wmd [N], info).

    A [N|1, n, D], B [N|1, m, D] token embeddings (normalised here), masks [.., S] bool, weights wa/wb [.., S]
    (masked tokens get zero mass; each side is renormalised to total mass 1)."""
    if solver not in ("emd", "sinkhorn"):
        raise SimattrError(f"solver must be 'emd' or 'sinkhorn', got {solver!r}")
    N = max(A.shape[0], B.shape[0])
    A = l2(A.double()).expand(N, -1, -1)
    B = l2(B.double()).expand(N, -1, -1)
    ma = (wa.double().to(A.device) * Amask.to(A.device)).expand(N, -1)
    mb = (wb.double().to(B.device) * Bmask.to(B.device)).expand(N, -1)
    sa, sbm = ma.sum(1, keepdim=True), mb.sum(1, keepdim=True)
    if bool((sa <= 0).any()) or bool((sbm <= 0).any()):
        raise SimattrError("a text has zero total mass (all its tokens are special, skipped or of idf 0); "
                           "give a larger idf corpus or include special tokens")
    ma, mb = ma / sa, mb / sbm
    C = (1.0 - A @ B.transpose(1, 2)).clamp(0.0, 2.0)
    if solver == "sinkhorn":
        P, info = sinkhorn_log(C, ma, mb, eps=eps, max_iter=max_iter, tol=tol)
    else:
        plans = []
        for k in range(N):
            plans.append(torch.from_numpy(emd_pot(C[k].cpu().numpy(), ma[k].cpu().numpy(), mb[k].cpu().numpy())))
        P = torch.stack(plans).to(C.device, C.dtype)
        info = {"iterations": None, "marginal_error": float((P.sum(2) - ma).abs().sum(1).max())}
    wmd = (P * C).sum((1, 2))
    return P, C, wmd, info


def explain_ot_many(enc_a, enc_b, texts_a, texts_b, *, layer: Optional[int] = None, solver: str = "auto",
                    eps: float = 0.01, max_iter: int = 2000, tol: float = 1e-7, mass: str = "uniform", idf=None,
                    special: bool = False, threshold: float = 0.5, truncate: bool = False, units: str = "token",
                    aggregate: str = "sum", batch_size: int = 64) -> list:
    """One Explanation per pair (one text on a side is broadcast against all texts of the other)."""
    if solver not in SOLVERS:
        raise SimattrError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if mass not in ("uniform", "idf"):
        raise SimattrError(f"mass must be 'uniform' or 'idf', got {mass!r}")
    if units not in ("token", "word"):
        raise SimattrError(f"units must be 'token' or 'word', got {units!r}")
    if solver == "auto":
        solver = "emd" if pot_available() else "sinkhorn"
    if mass != "idf" and idf is not None:
        raise SimattrError("idf weights are used with mass='idf'")

    def weights(batch, enc, table):
        rows = []
        for t in batch.tokens:
            w = sb.token_weights(enc, t, table, zero_special=False) if table is not None else torch.ones(t.length, dtype=torch.float64)
            if not special:
                w = w * (~torch.tensor(t.special)).double()
            rows.append(w)
        return sb.pad_rows(rows)

    def batch(sides):
        A, B = sides.A, sides.B
        table_a = table_b = None
        if mass == "idf":
            corpus_spec = True if idf is None else idf
            table_a = sb.resolve_idf(enc_a, corpus_spec, [t.text for t in B.tokens])
            table_b = table_a if enc_b is enc_a else sb.resolve_idf(enc_b, corpus_spec, [t.text for t in B.tokens])
        wa, wb = weights(A, enc_a, table_a), weights(B, enc_b, table_b)
        return ot_batch(A.embeddings, A.mask, wa, B.embeddings, B.mask, wb, solver=solver, eps=eps,
                        max_iter=max_iter, tol=tol)

    def pair(state, sides, k, ta, tb, seconds):
        P, C, wmd, info = state
        plan = P[k, : ta.length, : tb.length].cpu().numpy()
        cost = C[k, : ta.length, : tb.length].cpu().numpy()
        ma = plan.sum(1)
        mb = plan.sum(0)
        cap = np.minimum(ma[:, None], mb[None, :])
        keep = (plan >= threshold * cap) & (plan > 0) & (cap > 0)
        pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(keep))]
        la, lb = list(ta.tokens), list(tb.tokens)
        score = float(wmd[k])
        settings = {"layer": sides.A.layer, "solver": solver, "eps": eps if solver == "sinkhorn" else None,
                    "mass": mass, "special": special, "threshold": threshold, "cost": "1 - cosine",
                    "model_a": enc_a.describe(), "model_b": enc_b.describe() if enc_b is not enc_a else "same",
                    "device": str(sides.A.embeddings.device)}
        extras = {"scores": {"wmd": score, "similarity": 1.0 - score},
                  "alignment": sb.pairs_list(la, lb, plan, pairs, cost=[cost[i, j] for i, j in pairs]),
                  "mass_a": ma.tolist(), "mass_b": mb.tolist(),
                  "contributions": (plan * cost).tolist(), "solver_info": info,
                  "token_info": sb.token_info(ta, tb), "seconds": seconds}
        return Explanation(method="ot", matrix=plan, tokens_a=la, tokens_b=lb, score=score, settings=settings,
                           extras=extras)

    return sb.explain_pairs(enc_a, enc_b, texts_a, texts_b, layer=layer, truncate=truncate, batch_size=batch_size,
                            units=units, aggregate=aggregate, batch=batch, pair=pair)


def explain_ot(enc_a, enc_b, text_a: str, text_b: str, *, layer: Optional[int] = None, solver: str = "auto",
               eps: float = 0.01, max_iter: int = 2000, tol: float = 1e-7, mass: str = "uniform", idf=None,
               special: bool = False, threshold: float = 0.5, truncate: bool = False, units: str = "token",
               aggregate: str = "sum") -> Explanation:
    """Optimal-transport explanation of a and b; see the module docstring."""
    return explain_ot_many(enc_a, enc_b, [text_a], [text_b], layer=layer, solver=solver, eps=eps, max_iter=max_iter,
                           tol=tol, mass=mass, idf=idf, special=special, threshold=threshold, truncate=truncate,
                           units=units, aggregate=aggregate)[0]


OPTIONS = Options("ot", [
    Option("solver", "auto", "'emd' (exact, POT), 'sinkhorn' (log domain), 'auto' (emd when POT is installed)",
           one_of("auto", "emd", "sinkhorn")),
    Option("eps", 0.01, "Sinkhorn entropic regularisation", positive_number, cli=Cli(type=float)),
    Option("max_iter", 2000, "most Sinkhorn iterations", integer(1), cli=None),
    Option("tol", 1e-7, "Sinkhorn stopping tolerance (row-marginal L1 error)", positive_number,
           cli=Cli(type=float)),
    Option("mass", "uniform", "token masses: 'uniform' or 'idf'", one_of("uniform", "idf")),
    Option("idf", None, "idf corpus for mass='idf': a list of texts (None: the pair's own texts)", idf_weights,
           cli=Cli(flag="--idf-corpus", dest="idf_corpus",
                   help="file with one corpus text per line: idf token weights")),
    Option("special", False, "[CLS]/[SEP] get mass", boolean, cli=Cli(action="boolean")),
    Option("threshold", 0.5, "alignment threshold, share of a token's mass", fraction, cli=Cli(type=float)),
] + set_options(aggregate="sum"))
