"""Agreement between methods: several methods on one pair, their matrices side by side, their rank correlations
(Spearman over the token pairs, for methods whose matrices share their units), and each one's faithfulness by
occlusion (`simattr.evaluate`) — the primer's advice is to read methods as independent pieces of evidence.

`Explainer.compare(a, b, methods=("ij", "bilrp", "maxsim", "ot"))`; on the command line
`simattr explain A B --method ij,bilrp,maxsim,ot --compare [--png FILE] [--html FILE] [--json]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import SimattrError

DEFAULT_METHODS = ("ij", "bilrp", "maxsim", "ot")


@dataclass
class Comparison:
    a: str
    b: str
    explanations: dict  # method -> Explanation, in the order asked
    spearman: dict  # "m1 vs m2" -> rank correlation of the two matrices over the token pairs (None: other units)
    faithfulness: dict = field(default_factory=dict)  # method -> {pearson, spearman, units_pearson, deletion_auc}

    def format(self) -> str:
        lines = [f"a: {self.a}", f"b: {self.b}", "method      score      sum(A)   faithful r   (Spearman)  deletion "
                 "most / random / least"]
        for m, e in self.explanations.items():
            f = self.faithfulness.get(m)
            tail = "" if not f else (f"{f['pearson']:>10.3f}   ({f['spearman']:.3f})    "
                                    f"{f['deletion_auc']['most']:.3f} / {f['deletion_auc']['random']:.3f} / "
                                    f"{f['deletion_auc']['least']:.3f}")
            lines.append(f"{m:<10} {e.score:>8.4f} {e.total:>10.4f} {tail}")
        lines.append("rank correlation of the matrices (Spearman over token pairs):")
        for k, v in self.spearman.items():
            lines.append(f"  {k:<22} {'—' if v is None else f'{v:+.3f}'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "explanations": {m: e.to_dict() for m, e in self.explanations.items()},
                "spearman": self.spearman, "faithfulness": self.faithfulness}

    def to_html(self, path=None) -> str:
        """One page: the comparison table, then each method's heatmap (`Explanation.to_html`'s tables)."""
        import html as _html

        from .viz import write_page
        parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>simattr comparison</title></head><body>",
                 f"<h3>Methods compared</h3><pre>{_html.escape(self.format())}</pre>"]
        for m, e in self.explanations.items():
            page = e.to_html(title=m)
            body = page[page.index("<body>") + len("<body>"): page.index("</body>")]
            parts.append(f"<div style='display:inline-block;vertical-align:top;margin:8px'>{body}</div>")
        parts.append("</body></html>")
        return write_page("\n".join(parts), path)

    def to_png(self, path, dpi: int = 130):
        """The methods' matrices side by side (each on its own symmetric colour scale)."""
        from .viz import new_figure, save_figure
        es = list(self.explanations.items())
        h = max(e.matrix.shape[0] for _, e in es)
        w = sum(e.matrix.shape[1] for _, e in es)
        fig, kind = new_figure(path, (max(6.0, 0.32 * w + 2.0 * len(es)), max(3.0, 0.3 * h + 2.2)))
        axes = fig.subplots(1, len(es), squeeze=False)[0]
        for ax, (m, e) in zip(axes, es):
            scale = float(np.abs(e.matrix).max()) or 1.0
            im = ax.imshow(e.matrix, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
            ax.set_xticks(range(e.matrix.shape[1]), [str(t) for t in e.tokens_b], rotation=90, fontsize=7)
            ax.set_yticks(range(e.matrix.shape[0]), [str(t) for t in e.tokens_a], fontsize=7)
            f = self.faithfulness.get(m)
            ax.set_title(f"{m}: score {e.score:.3f}" + (f"\nfaithful r {f['pearson']:.2f}" if f else ""), fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        fig.tight_layout()
        return save_figure(fig, path, kind, dpi)


def _spearman(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    def ranks(v):
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for val in np.unique(v):  # ties: their mean rank
            tie = v == val
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r
    rx, ry = ranks(x.ravel()), ranks(y.ravel())
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def compare(explainer, a: str, b: str, methods=DEFAULT_METHODS, faithfulness: bool = True, **options) -> Comparison:
    """Explain (a, b) with each of `methods` (options apply to the methods that take them; one no method takes is
    a SimattrError), their pairwise rank correlations, and (faithfulness=True) each one's occlusion check."""
    from .methods import OPTIONS
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))
    if len(methods) < 2:
        raise SimattrError(f"compare needs at least two methods, got {methods!r}")
    for m in methods:
        if m not in OPTIONS:
            raise SimattrError(f"unknown method {m!r}; available: {', '.join(sorted(OPTIONS))}")
    for name in options:
        if not any(name in OPTIONS[m] for m in methods):
            raise SimattrError(f"option {name!r} is taken by none of {', '.join(methods)}")
    out = {m: explainer.explain(a, b, method=m, soft_options=options) for m in methods}
    spearman = {}
    for i, m1 in enumerate(methods):
        for m2 in methods[i + 1:]:
            e1, e2 = out[m1], out[m2]
            same = e1.matrix.shape == e2.matrix.shape and list(e1.tokens_a) == list(e2.tokens_a) and \
                list(e1.tokens_b) == list(e2.tokens_b)
            spearman[f"{m1} vs {m2}"] = _spearman(e1.matrix, e2.matrix) if same else None
    checks = {}
    if faithfulness:
        from .evaluate import faithfulness as check
        for m, e in out.items():
            f = check(explainer, a, b, e, truncate=bool(options.get("truncate", False)))
            checks[m] = {"pearson": f.pearson, "spearman": f.spearman, "units_pearson": f.pearson_rows,
                         "deletion_auc": f.auc}
    return Comparison(a, b, out, spearman, checks)
