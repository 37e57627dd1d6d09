"""The result of an explanation: a token-by-token matrix with its checks."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import SimattrError


#: the largest matrix Jupyter draws inline as an HTML table (a 512 x 512 table would be tens of MB of HTML)
HTML_INLINE_CELLS = 128 * 128


@dataclass
class Explanation:
    method: str
    matrix: np.ndarray  # [U_a, U_b]
    tokens_a: list
    tokens_b: list
    score: float  # the model's similarity of a and b
    terms: dict = field(default_factory=dict)  # s(a,b), s(a,r_b), s(r_a,b), s(r_a,r_b)
    error: Optional[float] = None  # |Σ A − target|
    settings: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # method-specific: completeness per side, plans, timings...
    factors: Optional[dict] = field(default=None, repr=False)  # return_factors=True: {"a": G_a, "b": G_b} [D, U]

    @property
    def total(self) -> float:
        """Σ A, the similarity (or similarity difference) the matrix decomposes."""
        return float(self.matrix.sum())

    @property
    def decomposition(self) -> Optional[dict]:
        """The score itself decomposed (IJ: s(a,b) = baseline s(r_a,r_b) + Σ first_order_a + Σ first_order_b + Σ A,
        the first-order terms per token of a and of b; BiLRP: Σ A + the biases' share), or None."""
        d = self.extras.get("decomposition")
        return d if isinstance(d, dict) else None

    def decomposition_line(self) -> Optional[str]:
        """The decomposition as one line of text (None without one)."""
        d = self.decomposition
        if d is None:
            return None
        if "bias" in d:
            return (f"score {d['score']:.6f} = interactions sum(A) {d['interactions']:.6f} + biases "
                    f"{d['bias']:+.6f}" + (f" + rounding {d['rounding']:+.1e}" if d.get("rounding") else ""))
        return (f"score {d['score']:.6f} = baseline s(r_a,r_b) {d['baseline']:.6f} + first-order a "
                f"{d['first_order_sum_a']:+.6f} + first-order b {d['first_order_sum_b']:+.6f} + interactions "
                f"sum(A) {d['interactions']:+.6f}   (off by {d['error']:.1e})")

    def top_interactions(self, k: int = 10, by: str = "abs"):
        """The k strongest token pairs as dicts (i, j, token_a, token_b, value), by |value| (or 'value')."""
        m = self.matrix
        key = np.abs(m) if by == "abs" else m
        order = np.argsort(-key, axis=None)[: max(0, int(k))]
        out = []
        for flat in order:
            i, j = np.unravel_index(flat, m.shape)
            out.append({"i": int(i), "j": int(j), "token_a": self.tokens_a[i], "token_b": self.tokens_b[j],
                        "value": float(m[i, j])})
        return out

    def to_dict(self) -> dict:
        return {"method": self.method, "score": float(self.score), "error": None if self.error is None else float(self.error),
                "total": self.total, "terms": {k: float(v) for k, v in self.terms.items()},
                "tokens_a": list(self.tokens_a), "tokens_b": list(self.tokens_b),
                "matrix": self.matrix.astype(float).tolist(), "settings": plain(self.settings),
                **{k: plain(v) for k, v in self.extras.items()}}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> "Explanation":
        """The inverse of `to_dict` (also reads a line of `simattr explain-many`): keys other than the fields go
        to `extras` (`total` is recomputed from the matrix)."""
        if not isinstance(data, dict):
            raise SimattrError(f"not an explanation: a dict (a JSON object) is needed, got {type(data).__name__}")
        d = dict(data)
        missing = [k for k in ("method", "matrix", "tokens_a", "tokens_b", "score") if k not in d]
        if missing:
            raise SimattrError(f"not an explanation: no {', '.join(missing)}")
        d.pop("total", None)
        tokens_a, tokens_b = d.pop("tokens_a"), d.pop("tokens_b")
        for name, toks in (("tokens_a", tokens_a), ("tokens_b", tokens_b)):
            if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
                raise SimattrError(f"not an explanation: {name} must be a list of strings")
        shape = (len(tokens_a), len(tokens_b))
        if 0 in shape:
            raise SimattrError("not an explanation: each side needs at least one token")
        try:
            matrix = np.asarray(d.pop("matrix"), dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise SimattrError(f"not an explanation: the matrix must be {shape[0]} rows of {shape[1]} numbers") from None
        if matrix.shape != shape and not (matrix.size == 0 and 0 in shape):
            raise SimattrError(f"not an explanation: the matrix is {'x'.join(map(str, matrix.shape))}, the tokens "
                               f"make {shape[0]}x{shape[1]}")
        matrix = matrix.reshape(shape)
        score, terms, settings = d.pop("score"), d.pop("terms", None) or {}, d.pop("settings", None) or {}
        if not np.isfinite(matrix).all():
            raise SimattrError("not an explanation: the matrix holds NaN or Inf")
        score = _number(score, "score")
        if not isinstance(terms, dict) or not isinstance(settings, dict):
            raise SimattrError("not an explanation: terms and settings must be JSON objects")
        terms = {str(k): _number(v, f"terms[{k!r}]") for k, v in terms.items()}
        error = d.pop("error", None)
        error = None if error is None else _number(error, "error")
        for key in ("conservation", "relative_error"):
            if d.get(key) is not None:
                _number(d[key], key)
        if d.get("scores") is not None:
            if not isinstance(d["scores"], dict):
                raise SimattrError("not an explanation: scores must be a JSON object of numbers")
            for k, v in d["scores"].items():
                _number(v, f"scores[{k!r}]")
        if d.get("steps_used") is not None and not isinstance(d["steps_used"], list):
            raise SimattrError("not an explanation: steps_used must be a list")
        return cls(method=str(d.pop("method")), matrix=matrix, tokens_a=list(tokens_a), tokens_b=list(tokens_b),
                   score=score, terms=terms, error=error, settings=dict(settings), extras=d)

    @classmethod
    def from_row(cls, row) -> "Explanation":
        """An Explanation from one result row (`simattr.results`: a dict from pyarrow's `to_pylist()`, pandas'
        `row.to_dict()`, a `datasets` row or a JSON line of `explain-many`). An error row is a SimattrError with its
        reason."""
        if not isinstance(row, dict):
            try:
                row = dict(row)
            except (TypeError, ValueError):
                raise SimattrError(f"not a result row: a dict is needed, got {type(row).__name__}") from None
        missing = [k for k in ("status", "method", "matrix", "tokens_a", "tokens_b", "score") if k not in row]
        if missing:
            raise SimattrError(f"not a result row: no {', '.join(missing)}")
        if row["status"] != "ok":
            raise SimattrError(f"row {row.get('id')!r} is an error row: {row.get('reason')}")
        try:
            details = json.loads(row["details"]) if row.get("details") else {}
        except (TypeError, ValueError):
            raise SimattrError(f"row {row.get('id')!r}: details is not JSON") from None
        matrix = [list(r) for r in row["matrix"]]
        err = row.get("error")
        err = None if err is None or (isinstance(err, float) and np.isnan(err)) else float(err)  # pandas: NaN for null
        return cls.from_dict({
            "method": row["method"], "matrix": matrix if matrix else np.zeros((0, len(row["tokens_b"]))),
            "tokens_a": list(row["tokens_a"]), "tokens_b": list(row["tokens_b"]), "score": float(row["score"]),
            "terms": details.get("terms") or {}, "error": err, "settings": details.get("settings") or {},
            **{k: v for k, v in (details.get("extras") or {}).items()
               if k not in ("method", "matrix", "tokens_a", "tokens_b", "score", "terms", "error", "settings")},
            "id": row.get("id"),
        })

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SimattrError(f"not an explanation: not JSON ({type(exc).__name__})") from None
        return cls.from_dict(data)

    def format(self, top: int = 10, max_tokens: int = 24) -> str:
        """A readable report: score, checks, the matrix (if small) and the strongest interactions."""
        if isinstance(top, bool) or not hasattr(top, "__index__") or top.__index__() < 0:
            raise SimattrError(f"top must be an integer >= 0, got {top!r}")
        lines = [f"method: {self.method}   score: {self.score:.6f}   sum(A): {self.total:.6f}"]
        if self.decomposition_line():
            lines.append(self.decomposition_line())
        if isinstance(self.extras.get("scores"), dict):
            lines.append("scores: " + "  ".join(f"{k}={v:.6f}" for k, v in self.extras["scores"].items()))
        if self.terms:
            lines.append("terms:  " + "  ".join(f"{k}={v:.6f}" for k, v in self.terms.items()))
        if self.error is not None:
            label = "conservation error" if self.method == "bilrp" else "completeness error"
            rel = self.extras.get("relative_error")
            line = f"{label}: {self.error:.3e}" + (f" ({100 * rel:.3g}% of the score)" if rel is not None else "")
            if self.extras.get("steps_used"):
                line += f"   steps: {self.settings.get('steps')} (nodes {' / '.join(map(str, self.extras['steps_used']))})"
            if self.extras.get("converged") is not None:
                line += "   converged" if self.extras["converged"] else "   NOT CONVERGED"
            lines.append(line)
        if self.extras.get("conservation") is not None:
            lines.append(f"conservation: {self.extras['conservation']:.4f} (sum(A) / the decomposed similarity)")
        for note in self.extras.get("warnings") or []:
            lines.append(f"warning: {note}")
        m = self.matrix
        first = self.first_order()
        if m.shape[0] <= max_tokens and m.shape[1] <= max_tokens:
            w = max(6, min(10, max(len(t) for t in self.tokens_b) + 1))
            head = " " * 12 + "".join(f"{t[:w - 1]:>{w}}" for t in self.tokens_b)
            lines.append(head + (f" | {'1st order':>{w}}" if first else ""))
            for k, (t, row) in enumerate(zip(self.tokens_a, m)):
                lines.append(f"{t[:11]:>11} " + "".join(f"{v:>{w}.3f}" for v in row)
                             + (f" | {first[0][k]:>{w}.3f}" if first else ""))
            if first:
                lines.append(f"{'1st order':>11} " + "".join(f"{v:>{w}.3f}" for v in first[1]))
        else:
            lines.append(f"matrix: {m.shape[0]} x {m.shape[1]} (use --json for all values)")
        lines.append(f"strongest {min(top, m.size)} interactions (token (position)):")
        for it in self.top_interactions(top):
            left, right = f"{it['token_a']} ({it['i']})", f"{it['token_b']} ({it['j']})"
            lines.append(f"  {left:>20} <-> {right:<20} {it['value']:+.5f}")
        return "\n".join(lines)

    def first_order(self):
        """(first-order terms per unit of a, per unit of b) as arrays, or None (`decomposition`)."""
        d = self.decomposition
        if d is None or d.get("first_order_a") is None or d.get("first_order_b") is None:
            return None
        fa, fb = np.asarray(d["first_order_a"], float), np.asarray(d["first_order_b"], float)
        if fa.shape != (self.matrix.shape[0],) or fb.shape != (self.matrix.shape[1],):
            return None
        return fa, fb

    def __str__(self):
        return self.format()

    def to_html(self, path=None, **kwargs) -> str:
        """A self-contained HTML heatmap (`simattr.viz.to_html`); written to `path` if given."""
        from .viz import to_html
        return to_html(self, path, **kwargs)

    def to_png(self, path, **kwargs):
        """A PNG heatmap (`simattr.viz.to_png`, needs matplotlib)."""
        from .viz import to_png
        return to_png(self, path, **kwargs)

    def _repr_html_(self) -> str:  # Jupyter: the heatmap, or the text report for a matrix too big to draw inline
        if self.matrix.size <= HTML_INLINE_CELLS:
            return self.to_html()
        import html
        return f"<pre>{html.escape(self.format())}</pre><p>(use .to_html(path) for the whole heatmap)</p>"


def _number(v, what: str) -> float:
    """A finite number of an explanation read back (SimattrError naming the field otherwise)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise SimattrError(f"not an explanation: {what} must be a number, got {v!r}")
    try:
        f = float(v)
    except OverflowError:
        f = float("inf")
    if not np.isfinite(f):
        raise SimattrError(f"not an explanation: {what} must be finite, got {v!r}")
    return f


def plain(v):
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        try:
            return v.tolist()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)
