"""BERTScore (Zhang, Kishore, Wu, Weinberger & Artzi 2020): greedy cosine matching of token embeddings.

Text a is the candidate, text b the reference. With S[i, j] = cos(a_i, b_j) at one layer,
    P = Σ_i w_i max_j S[i, j] / Σ_i w_i,   R = Σ_j w_j max_i S[i, j] / Σ_j w_j,   F = 2PR / (P + R),
w = 1 (idf=None) or idf weights from a corpus; [CLS]/[SEP] get weight 0 exactly as in the `bert-score` package (they
still take part in the matching as targets, as there). Optional baseline rescaling x → (x − b) / (1 − b) with a
user-given baseline (P, R, F) or a bert-score baseline file. With the same model and layer the scores equal
`bert_score.score(..., num_layers=layer)`: `layer` counts like bert-score's `num_layers` (default: the last).
"""
from __future__ import annotations

import math

from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..encoders.base import l2
from ..errors import SimattrError
from ..explanation import Explanation
from ..options import Cli, Option, Options, one_of
from .common_options import idf_weights, set_options
from . import _setbased as sb


def bertscore_batch(Ca: Tensor, Camask: Tensor, wa: Tensor, Rb: Tensor, Rbmask: Tensor, wb: Tensor,
                    backend: str = "auto"):
    """Batched BERTScore over padded token embeddings: dict of precision, recall, f1 [N] and the greedy matches.

    Ca [N|1, n, D] candidate tokens, Rb [N|1, m, D] reference tokens (normalised here), masks bool, weights
    wa/wb [.., S] (idf or 1, 0 for [CLS]/[SEP]). The two greedy matchings are MaxSim in both directions, so they
    run on the MaxSim kernels (`backend`)."""
    Ca, Rb = l2(Ca.float()), l2(Rb.float())
    pv, pi = ops.maxsim(Ca, Rb, Camask, Rbmask, backend=backend)
    rv, ri = ops.maxsim(Rb, Ca, Rbmask, Camask, backend=backend)
    N = pv.shape[0]
    wa = (wa.double().to(pv.device) * Camask.to(pv.device)).expand(N, -1)
    wb = (wb.double().to(pv.device) * Rbmask.to(pv.device)).expand(N, -1)
    sa, swb = wa.sum(1), wb.sum(1)
    if bool((sa <= 0).any()) or bool((swb <= 0).any()):
        raise SimattrError("the token weights of a text sum to 0 (idf over too small a corpus?); give a larger idf "
                           "corpus")
    P = (pv.double() * wa).sum(1) / sa
    R = (rv.double() * wb).sum(1) / swb
    F = 2 * P * R / (P + R)
    F = torch.nan_to_num(F, nan=0.0)
    return {"precision": P, "recall": R, "f1": F, "precision_match": (pv, pi), "recall_match": (rv, ri),
            "weights_a": wa / sa[:, None], "weights_b": wb / swb[:, None]}


def read_baseline(baseline, layer: int):
    """(P, R, F) from a 3-sequence, a dict with precision/recall/f1 (or P/R/F), or a bert-score baseline file
    (CSV with columns LAYER,P,R,F: the row of `layer`). Each value must be a finite number below 1 (the rescaling
    divides by 1 - b)."""
    if baseline is None:
        return None
    if isinstance(baseline, dict):
        keys = [("precision", "P"), ("recall", "R"), ("f1", "F")]
        try:
            return _check_baseline(tuple(baseline[k] if k in baseline else baseline[s] for k, s in keys), "dict")
        except KeyError:
            raise SimattrError("a baseline dict needs precision, recall and f1 (or P, R, F)") from None
    if isinstance(baseline, (str, bytes)) or hasattr(baseline, "__fspath__"):
        import csv
        from pathlib import Path
        path = Path(baseline.decode() if isinstance(baseline, bytes) else baseline)
        if not path.is_file():
            raise SimattrError(f"baseline file {str(path)!r} not found")
        try:
            with path.open(encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SimattrError(f"cannot read the baseline file {str(path)!r}: {_why(exc)}") from None
        body = [r for r in rows[1:] if r]
        if layer >= len(body):
            raise SimattrError(f"baseline file {str(path)!r} has no row for layer {layer}")
        return _check_baseline(body[layer][1:4], f"file {str(path)!r}, layer {layer}")
    try:
        vals = tuple(baseline)
    except TypeError:
        vals = ()
    if len(vals) != 3:
        raise SimattrError("baseline must be (P, R, F), a dict or a bert-score baseline file")
    return _check_baseline(vals, "(P, R, F)")


def _why(exc) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else (
        "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc))


def _check_baseline(vals, where: str) -> tuple:
    try:
        out = tuple(float(v) for v in vals)
    except (TypeError, ValueError):
        raise SimattrError(f"baseline {where}: P, R and F must be numbers, got {list(vals)!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) and v < 1 for v in out):
        raise SimattrError(f"baseline {where}: P, R and F must be finite numbers below 1 (rescaling divides by "
                           f"1 - b), got {list(out)!r}")
    return out


def explain_bertscore_many(enc_a, enc_b, texts_a, texts_b, *, layer: Optional[int] = None, idf=None,
                           baseline=None, truncate: bool = False, backend: str = "auto", units: str = "token",
                           aggregate: str = "max", batch_size: int = 64) -> list:
    """One Explanation per (candidate a, reference b) pair; one text on a side is broadcast.

    idf: None (uniform), True (idf over the references texts_b, like bert_score's idf=True), a list of corpus
    texts, or a dict {token id or token: weight}."""
    sb.check_backend(backend)
    if units not in ("token", "word"):
        raise SimattrError(f"units must be 'token' or 'word', got {units!r}")

    def batch(sides):
        A, B = sides.A, sides.B
        base = read_baseline(baseline, A.layer)
        refs = [t.text for t in B.tokens]
        table_a = sb.resolve_idf(enc_a, idf, refs)
        table_b = table_a if enc_b is enc_a else sb.resolve_idf(enc_b, idf, refs)
        wa = sb.pad_rows([sb.token_weights(enc_a, t, table_a) for t in A.tokens])
        wb = sb.pad_rows([sb.token_weights(enc_b, t, table_b) for t in B.tokens])
        which = ops.choose_maxsim_backend(A.embeddings.device.type, torch.float32, backend,
                                          ops.mask_density(A.embeddings, B.embeddings, A.mask, B.mask))
        return base, which, bertscore_batch(A.embeddings, A.mask, wa, B.embeddings, B.mask, wb, backend=which)

    def pair(state, sides, k, ta, tb, seconds):
        base, which, res = state
        A, B = sides.A, sides.B
        a = l2(A.embeddings[sides.ia(k), : ta.length].double())
        b = l2(B.embeddings[sides.ib(k), : tb.length].double())
        S = (a @ b.T).cpu().numpy()
        la, lb = list(ta.tokens), list(tb.tokens)
        raw = {key: float(res[key][k]) for key in ("precision", "recall", "f1")}
        scores = dict(raw)
        if base is not None:
            scores = {key: (raw[key] - bv) / (1 - bv) for key, bv in zip(("precision", "recall", "f1"), base)}
        pv, pi = (t[k, : ta.length].cpu() for t in res["precision_match"])
        rv, ri = (t[k, : tb.length].cpu() for t in res["recall_match"])
        w_a = res["weights_a"][k, : ta.length].cpu().numpy()
        w_b = res["weights_b"][k, : tb.length].cpu().numpy()
        p_pairs = [(i, int(pi[i])) for i in range(ta.length) if pi[i] >= 0]
        r_pairs = [(int(ri[j]), j) for j in range(tb.length) if ri[j] >= 0]
        settings = {"layer": A.layer, "idf": _describe_idf(idf), "baseline": list(base) if base else None,
                    "backend": which, "candidate": "a", "reference": "b", "model_a": enc_a.describe(),
                    "model_b": enc_b.describe() if enc_b is not enc_a else "same", "device": str(A.embeddings.device)}
        extras = {"scores": scores,
                  "alignment": {"precision": sb.pairs_list(la, lb, S, p_pairs, weight=[w_a[i] for i, _ in p_pairs]),
                                "recall": sb.pairs_list(la, lb, S, r_pairs, weight=[w_b[j] for _, j in r_pairs])},
                  "weights_a": w_a.tolist(), "weights_b": w_b.tolist(),
                  "token_info": sb.token_info(ta, tb), "seconds": seconds}
        if base is not None:
            extras["raw_scores"] = raw
        return Explanation(method="bertscore", matrix=S, tokens_a=la, tokens_b=lb, score=scores["f1"],
                           settings=settings, extras=extras)

    return sb.explain_pairs(enc_a, enc_b, texts_a, texts_b, layer=layer, truncate=truncate, batch_size=batch_size,
                            units=units, aggregate=aggregate, batch=batch, pair=pair)


def _describe_idf(idf):
    if idf is None or idf is False:
        return None
    if idf is True:
        return "references"
    if isinstance(idf, dict):
        return f"dict of {len(idf)} weights"
    return f"corpus of {len(idf)} texts"


def explain_bertscore(enc_a, enc_b, text_a: str, text_b: str, *, layer: Optional[int] = None, idf=None,
                      baseline=None, truncate: bool = False, backend: str = "auto", units: str = "token",
                      aggregate: str = "max") -> Explanation:
    """BERTScore of candidate a against reference b; see the module docstring."""
    return explain_bertscore_many(enc_a, enc_b, [text_a], [text_b], layer=layer, idf=idf, baseline=baseline,
                                  truncate=truncate, backend=backend, units=units, aggregate=aggregate)[0]


def _baseline(v):
    if v is None or isinstance(v, str) or hasattr(v, "__fspath__"):
        return v  # a file: read (and checked) when the layer is known
    if isinstance(v, dict) or (isinstance(v, (list, tuple)) and len(v) == 3):
        read_baseline(v, 0)  # numbers: checked now
        return v
    raise ValueError("None, a bert-score baseline file, (P, R, F) or a dict of them")


OPTIONS = Options("bertscore", [
    Option("idf", None, "token weights: None (uniform), True (idf over the references), a list of corpus texts "
           "or a dict", idf_weights, cli=Cli(flag="--idf-corpus", dest="idf_corpus",
                                      help="file with one corpus text per line: idf token weights")),
    Option("baseline", None, "rescaling baseline: a bert-score baseline file or (P, R, F)", _baseline,
           cli=Cli(help="rescaling baseline: 'P,R,F' or a bert-score baseline file")),
    Option("backend", "auto", "MaxSim kernel of the greedy matching (auto: where measured faster)",
           one_of(*ops.MAXSIM_BACKENDS)),
] + set_options(aggregate="max"))
