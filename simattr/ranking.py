"""Retrieval questions: `rank` (documents ordered by the model's similarity to a query, the top K explained, the
query's G made once) and `contrast` (why document 1 and not document 2: s(q, d1) − s(q, d2) decomposed, one matrix
whose columns are d1's tokens then d2's, the second with its sign turned).

A contrast is an `Explanation` (method "contrast"), so its report, JSON, HTML and PNG are the usual ones: the query's
tokens as rows, `1:`-prefixed columns for document 1 and `2:`-prefixed ones for document 2 (values −A_2); with IJ its
decomposition is the difference of the two: baseline s(r_q, r_1) − s(r_q, r_2), the query's first-order terms
m_q^(1) − m_q^(2), each document's (d2's turned), and Σ A_1 − Σ A_2, exact up to both pairs' quadrature errors.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import SimattrError
from .explanation import Explanation


@dataclass
class Ranking:
    """Documents ordered by the model's similarity to the query (`order[k]`: the index in `documents` of rank k),
    with the top K's explanations."""

    query: str
    documents: list
    scores: list  # per document, in input order
    order: list
    explanations: list = field(default_factory=list)  # of the top K, in rank order

    def top(self, k: int = None) -> list:
        """[(rank, index, score, document)] of the first k (all if None)."""
        ks = self.order if k is None else self.order[:k]
        return [(r, i, self.scores[i], self.documents[i]) for r, i in enumerate(ks)]

    def format(self, k: int = 10, top_pairs: int = 3) -> str:
        lines = [f"query: {self.query}"]
        for r, i, s, d in self.top(k):
            lines.append(f"{r + 1:>3}. {s:+.6f}  [{i}] {d}")
            if r < len(self.explanations):
                e = self.explanations[r]
                pairs = ", ".join(f"{it['token_a']}~{it['token_b']} {it['value']:+.3f}"
                                  for it in e.top_interactions(top_pairs))
                lines.append(f"       strongest: {pairs}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"query": self.query, "ranking": [{"rank": r + 1, "index": i, "score": s, "document": d}
                                                 for r, i, s, d in self.top()],
                "explanations": [e.to_dict() for e in self.explanations]}


def model_scores(explainer, query: str, documents: list, truncate: bool = False) -> list:
    """The model's similarity of the query with each document, as the path methods define it (sim="auto": cosine
    or dot as the model scores; MaxSim for a multi-vector model), without any pass."""
    from .methods.path import LATE_INTERACTION, model_similarity
    sim = model_similarity(explainer.encoder_a, explainer.encoder_b)
    if sim in LATE_INTERACTION:
        return [e.score for e in explainer.explain_many(query, documents, method="maxsim", truncate=truncate)]
    from .encoders import prepared

    def embed(enc, text):
        t = enc.tokenize(text, truncate=truncate)
        return enc.function(t, 0, normalize=sim == "cosine")(enc.hidden(t, 0))[0].double()

    with prepared(explainer.encoder_a, explainer.encoder_b), torch.no_grad():
        q = embed(explainer.encoder_a, query)
        return [float(q @ embed(explainer.encoder_b, d)) for d in documents]


def rank(explainer, query: str, documents, top_k: int = 10, explain: bool = True, method: str = "ij",
         **options) -> Ranking:
    """`documents` ranked by the model's similarity to `query`; the top `top_k` explained with `method` in one job
    (the query's G made once)."""
    if not isinstance(query, str):
        raise SimattrError(f"the query must be a string, got {type(query).__name__}")
    from .methods._setbased import as_list
    documents = as_list(documents, "documents")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise SimattrError(f"top_k must be a non-negative integer, got {top_k!r}")
    if explain:
        explainer.check_options(method, options)  # a bad option fails before any scoring
    scores = model_scores(explainer, query, documents, truncate=bool(options.get("truncate", False)))
    order = sorted(range(len(documents)), key=lambda i: -scores[i])
    out = Ranking(query, documents, scores, order)
    if explain and top_k:
        out.explanations = explainer.explain_many(query, [documents[i] for i in order[:top_k]], method=method,
                                                  **options)
    return out


def contrast(explainer, query: str, doc_1: str, doc_2: str, method: str = "ij", **options) -> Explanation:
    """Why `doc_1` and not `doc_2` for `query`: s(q, d1) − s(q, d2) as one Explanation (see the module docstring);
    its extras keep both explanations ("pair_1", "pair_2")."""
    e1, e2 = explainer.explain_many(query, [doc_1, doc_2], method=method, **options)
    if list(e1.tokens_a) != list(e2.tokens_a):
        raise SimattrError("the query's units differ between the two pairs (per-pair units?); give one units option")
    matrix = np.hstack([e1.matrix, -e2.matrix])
    tokens_b = [f"1:{t}" for t in e1.tokens_b] + [f"2:{t}" for t in e2.tokens_b]
    extras = {"pair_1": e1.to_dict(), "pair_2": e2.to_dict(), "documents": [doc_1, doc_2],
              "split": len(e1.tokens_b)}
    d1, d2 = e1.decomposition, e2.decomposition
    if d1 is not None and d2 is not None:
        dec = {"score": e1.score - e2.score, "interactions": d1["interactions"] - d2["interactions"],
               "baseline": d1["baseline"] - d2["baseline"],
               "first_order_sum_a": d1["first_order_sum_a"] - d2["first_order_sum_a"],
               "first_order_sum_b": d1["first_order_sum_b"] - d2["first_order_sum_b"]}
        if "bias" in d1:
            dec.update(bias=d1["bias"] - d2["bias"], rounding=d1.get("rounding", 0.0) - d2.get("rounding", 0.0))
        else:
            dec["first_order_a"] = list(np.subtract(d1["first_order_a"], d2["first_order_a"]))
            dec["first_order_b"] = list(d1["first_order_b"]) + [-v for v in d2["first_order_b"]]
        dec["sum"] = dec["baseline"] + dec["first_order_sum_a"] + dec["first_order_sum_b"] + dec["interactions"] + \
            dec.get("bias", 0.0) + dec.get("rounding", 0.0)
        dec["error"] = abs(dec["score"] - dec["sum"])
        extras["decomposition"] = dec
    errors = [e.error for e in (e1, e2)]
    return Explanation(method="contrast", matrix=matrix, tokens_a=list(e1.tokens_a), tokens_b=tokens_b,
                       score=e1.score - e2.score, error=None if None in errors else errors[0] + errors[1],
                       settings={"method": method, **e1.settings}, extras=extras)
