"""Corpus-level evidence over a job's results (`simattr report RESULTS -o report.html`, `simattr.corpus.report`).

Every explained pair (its rows of an explain-many output) is read at the word level (special tokens left out, word
pieces merged, their values summed), then over all pairs:

- word pairs (a word of a with a word of b) and words (a word's row or column sum: what it adds with all of the other
  text) by total contribution, with their mean and count;
- word classes (`classes={"negation": ["not", "no", "never"]}`): per class, how often its words occur, what they
  contribute (total, mean per occurrence, share of all contributions) against the mean of every other word, and the
  mean score of pairs where exactly one text has a word of the class ("contrasting pairs") against pairs where
  neither has — the primer's check of whether a model under-weights negation;
- the distribution of the completeness (IJ) or conservation (BiLRP) errors;
- the pairs whose explanation agrees least with occlusion (rows made with `--faithfulness`).

The HTML page embeds its plots (PNG, base64); `CorpusReport.to_dict` has every number.
"""
from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .errors import SimattrError


def word_matrix(e):
    """(words of a, words of b, W): special tokens dropped, word pieces merged (values summed)."""
    from .align import postprocess
    w = postprocess(e, units="word", how="sum", trim=True)
    return [str(t).lower() for t in w.tokens_a], [str(t).lower() for t in w.tokens_b], np.asarray(w.matrix, float)


@dataclass
class CorpusReport:
    pairs: int
    error_rows: int
    methods: list
    word_pairs: list  # [{"a", "b", "sum", "mean", "count"}] by |sum|
    words: list  # [{"word", "sum", "mean", "count"}] by |sum|
    classes: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # [{"id", "error", "relative"}]
    disagreement: list = field(default_factory=list)  # [{"id", "pearson", "spearman"}] lowest first

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def format(self, top: int = 10) -> str:
        lines = [f"{self.pairs} pairs explained ({', '.join(self.methods)}), {self.error_rows} error rows"]
        lines.append("word pairs contributing most (sum, mean, count):")
        lines += [f"  {p['a']:>14} ~ {p['b']:<14} {p['sum']:+9.4f} {p['mean']:+8.4f} {p['count']:>5}"
                  for p in self.word_pairs[:top]]
        lines.append("words contributing most (sum, mean, count):")
        lines += [f"  {w['word']:>14} {w['sum']:+9.4f} {w['mean']:+8.4f} {w['count']:>5}" for w in self.words[:top]]
        for name, c in self.classes.items():
            lines.append(f"class {name!r} ({', '.join(c['words'])}): {c['occurrences']} occurrences in "
                         f"{c['pairs_with']} pairs; mean contribution per occurrence {c['mean_per_occurrence']:+.4f} "
                         f"against {c['mean_other_word']:+.4f} for other words; share of all contributions "
                         f"{c['share']:.3f}; mean score: contrasting pairs {_fmt(c['mean_score_contrasting'])}, "
                         f"pairs without {_fmt(c['mean_score_without'])}")
        if self.errors:
            errs = np.array([e["error"] for e in self.errors])
            lines.append(f"errors: median {np.median(errs):.2e}, 90th percentile {np.quantile(errs, 0.9):.2e}, "
                         f"largest {errs.max():.2e}")
        if self.disagreement:
            lines.append("least faithful (pearson with occlusion): " + ", ".join(
                f"{d['id']} ({d['pearson']:.2f})" for d in self.disagreement[:top]))
        return "\n".join(lines)

    def to_html(self, path=None, top: int = 25) -> str:
        from .viz import write_page
        esc = html.escape
        parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>simattr corpus report</title><style>",
                 "body{font-family:system-ui,sans-serif;font-size:13px;margin:16px}table{border-collapse:collapse}",
                 "td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}</style></head><body>",
                 "<h2>Corpus report</h2>", f"<p>{self.pairs} pairs explained ({esc(', '.join(self.methods))}), "
                 f"{self.error_rows} error rows</p>"]
        parts.append(_plot(self, top))
        parts.append("<h3>Word pairs</h3><table><tr><th>a</th><th>b</th><th>sum</th><th>mean</th><th>count</th></tr>")
        parts += [f"<tr><td>{esc(p['a'])}</td><td>{esc(p['b'])}</td><td>{p['sum']:+.4f}</td><td>{p['mean']:+.4f}"
                  f"</td><td>{p['count']}</td></tr>" for p in self.word_pairs[:top]]
        parts.append("</table><h3>Words</h3><table><tr><th>word</th><th>sum</th><th>mean</th><th>count</th></tr>")
        parts += [f"<tr><td>{esc(w['word'])}</td><td>{w['sum']:+.4f}</td><td>{w['mean']:+.4f}</td>"
                  f"<td>{w['count']}</td></tr>" for w in self.words[:top]]
        parts.append("</table>")
        if self.classes:
            parts.append("<h3>Word classes</h3><table><tr><th>class</th><th>occurrences</th><th>pairs</th>"
                         "<th>mean per occurrence</th><th>other words' mean</th><th>share</th>"
                         "<th>mean score, contrasting pairs</th><th>pairs without</th></tr>")
            parts += [f"<tr><td>{esc(n)}</td><td>{c['occurrences']}</td><td>{c['pairs_with']}</td>"
                      f"<td>{c['mean_per_occurrence']:+.4f}</td><td>{c['mean_other_word']:+.4f}</td>"
                      f"<td>{c['share']:.3f}</td><td>{_fmt(c['mean_score_contrasting'])}</td>"
                      f"<td>{_fmt(c['mean_score_without'])}</td></tr>" for n, c in self.classes.items()]
            parts.append("</table>")
        if self.disagreement:
            parts.append("<h3>Least faithful pairs (occlusion)</h3><table><tr><th>id</th><th>pearson</th>"
                         "<th>spearman</th></tr>")
            parts += [f"<tr><td>{esc(str(d['id']))}</td><td>{d['pearson']:.3f}</td><td>{d['spearman']:.3f}</td></tr>"
                      for d in self.disagreement[:top]]
            parts.append("</table>")
        parts.append("</body></html>")
        return write_page("\n".join(parts), path)


def _fmt(v):
    return "—" if v is None else f"{v:.4f}"


def _plot(rep: CorpusReport, top: int) -> str:
    """The top word pairs and the error distribution as one embedded PNG ('' without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "<p>(plots need matplotlib)</p>"
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    pairs = rep.word_pairs[: min(top, 15)][::-1]
    ax1.barh(range(len(pairs)), [p["sum"] for p in pairs], color=["#c0392b" if p["sum"] > 0 else "#2e6fb7"
                                                                 for p in pairs])
    ax1.set_yticks(range(len(pairs)), [f"{p['a']} ~ {p['b']}" for p in pairs], fontsize=7)
    ax1.set_title("word pairs: total contribution", fontsize=9)
    if rep.errors:
        errs = np.array([max(e["error"], 1e-16) for e in rep.errors])
        ax2.hist(np.log10(errs), bins=20, color="#777")
        ax2.set_xlabel("log10 error", fontsize=8)
    ax2.set_title("completeness / conservation errors", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return f"<img alt='plots' src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def report(rows, classes: dict = None) -> CorpusReport:
    """The corpus report of result rows (`simattr.results`: dicts, e.g. `results.read_rows(path)`), or of
    Explanations; classes: {name: [words]} (matched case-insensitively against whole words)."""
    from .explanation import Explanation
    classes = {str(k): sorted({str(w).lower() for w in v}) for k, v in (classes or {}).items()}
    for name, words in classes.items():
        if not words:
            raise SimattrError(f"word class {name!r} has no word")
    pair_sum, pair_n = defaultdict(float), defaultdict(int)
    word_sum, word_n = defaultdict(float), defaultdict(int)
    cls = {n: {"occ": 0, "sum": 0.0, "pairs": 0, "contrast_scores": []} for n in classes}
    without_scores = {n: [] for n in classes}
    errors, disagreement, methods, ok, bad = [], [], [], 0, 0
    for k, row in enumerate(rows):
        if isinstance(row, Explanation):
            e, rid = row, k
        elif isinstance(row, dict) and row.get("status") == "error":
            bad += 1
            continue
        elif isinstance(row, dict):
            e = Explanation.from_row(row) if "status" in row else Explanation.from_dict(row)
            rid = row.get("id", k)
        else:
            raise SimattrError(f"row {k} is not a result row or an Explanation ({type(row).__name__})")
        ok += 1
        if e.method not in methods:
            methods.append(e.method)
        wa, wb, W = word_matrix(e)
        for i, x in enumerate(wa):
            for j, y in enumerate(wb):
                pair_sum[(x, y)] += W[i, j]
                pair_n[(x, y)] += 1
        rows_a, cols_b = W.sum(1), W.sum(0)
        for x, v in zip(wa, rows_a):
            word_sum[x] += v
            word_n[x] += 1
        for y, v in zip(wb, cols_b):
            word_sum[y] += v
            word_n[y] += 1
        for name, words in classes.items():
            ws = set(words)
            in_a = [v for x, v in zip(wa, rows_a) if x in ws]
            in_b = [v for y, v in zip(wb, cols_b) if y in ws]
            c = cls[name]
            if in_a or in_b:
                c["pairs"] += 1
                c["occ"] += len(in_a) + len(in_b)
                c["sum"] += float(sum(in_a) + sum(in_b))
                if bool(in_a) != bool(in_b):
                    c["contrast_scores"].append(float(e.score))
            else:
                without_scores[name].append(float(e.score))
        if e.error is not None:
            rel = e.extras.get("relative_error")
            errors.append({"id": rid, "error": float(e.error), "relative": None if rel is None else float(rel)})
        f = e.extras.get("faithfulness")
        if isinstance(f, dict) and f.get("pearson") is not None:
            disagreement.append({"id": rid, "pearson": float(f["pearson"]), "spearman": float(f.get("spearman", 0))})
    if ok == 0:
        raise SimattrError("no explained pair among the rows (only error rows, or none)")
    word_pairs = [{"a": a, "b": b, "sum": s, "mean": s / pair_n[(a, b)], "count": pair_n[(a, b)]}
                  for (a, b), s in pair_sum.items()]
    word_pairs.sort(key=lambda p: -abs(p["sum"]))
    words = [{"word": w, "sum": s, "mean": s / word_n[w], "count": word_n[w]} for w, s in word_sum.items()]
    words.sort(key=lambda w: -abs(w["sum"]))
    out_classes = {}
    all_sum, all_n = sum(word_sum.values()), sum(word_n.values())
    for name, words_ in classes.items():
        c = cls[name]
        other_n = all_n - c["occ"]
        out_classes[name] = {
            "words": words_, "occurrences": c["occ"], "pairs_with": c["pairs"], "contribution_sum": c["sum"],
            "mean_per_occurrence": c["sum"] / c["occ"] if c["occ"] else 0.0,
            "mean_other_word": (all_sum - c["sum"]) / other_n if other_n else 0.0,
            "share": c["sum"] / all_sum if all_sum else 0.0,
            "mean_score_contrasting": float(np.mean(c["contrast_scores"])) if c["contrast_scores"] else None,
            "mean_score_without": float(np.mean(without_scores[name])) if without_scores[name] else None}
    disagreement.sort(key=lambda d: d["pearson"])
    return CorpusReport(ok, bad, methods, word_pairs, words, out_classes, errors, disagreement)
