"""Pictures of an explanation: a self-contained HTML heatmap (also Jupyter's rich display) and a PNG (matplotlib).

Both draw the token matrix with a diverging scale centred on zero (red: the pair adds to the similarity, blue: it
takes away), symmetric in ±max|A|, with each side's token totals (row and column sums) beside it. The terminal
form is `Explanation.format()`.
"""
from __future__ import annotations

import html
import os

import numpy as np

from .errors import SimattrError
from .outputs import check_writable, write_atomic


def _colour(v: float, scale: float) -> str:
    """White at 0, red (positive) / blue (negative) at ±scale."""
    t = 0.0 if scale <= 0 else max(-1.0, min(1.0, v / scale))
    if t >= 0:
        r, g, b = 255, round(255 * (1 - 0.78 * t)), round(255 * (1 - 0.85 * t))
    else:
        r, g, b = round(255 * (1 + 0.85 * t)), round(255 * (1 + 0.6 * t)), 255
    return f"#{r:02x}{g:02x}{b:02x}"


def _summary(e) -> str:
    parts = [f"method {html.escape(str(e.method))}", f"score {e.score:.4f}", f"&Sigma;A {e.total:.4f}"]
    if e.error is not None:
        parts.append(f"error {e.error:.2e}")
    line = " &middot; ".join(parts)
    if e.decomposition_line():
        line += "<br>" + html.escape(e.decomposition_line())
    return line


def to_html(e, path=None, digits: int = 3, title: str = None) -> str:
    """The explanation as one HTML page (inline CSS, no scripts): the matrix as a coloured table (hover: the pair
    and its value), row sums (each token of a) and column sums (each token of b), and the strongest pairs.
    Written to `path` if given; returned either way."""
    m = np.asarray(e.matrix, dtype=np.float64)
    scale = float(np.abs(m).max()) if m.size else 0.0
    rows, cols = m.sum(1), m.sum(0)
    first = e.first_order()  # the first-order terms beside the matrix (the score's decomposition)
    side_scale = float(max(np.abs(rows).max(initial=0), np.abs(cols).max(initial=0),
                           *([np.abs(first[0]).max(initial=0), np.abs(first[1]).max(initial=0)] if first else [])))
    esc = html.escape
    ta, tb = [esc(str(t)) for t in e.tokens_a], [esc(str(t)) for t in e.tokens_b]
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>{esc(title or 'simattr explanation')}</title><style>",
           "body{font-family:system-ui,sans-serif;font-size:13px;margin:16px}",
           "table.simattr{border-collapse:collapse}",
           "table.simattr td{width:3.2em;height:1.6em;text-align:center;font-size:11px;border:1px solid #eee}",
           "table.simattr th{font-weight:normal;padding:2px 6px;white-space:nowrap}",
           "table.simattr th.b{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}",
           "table.simattr td.sum{border-left:2px solid #999}table.simattr tr.sum td{border-top:2px solid #999}",
           "</style></head><body>",
           f"<h3>{esc(title) if title else 'Why are these texts similar?'}</h3>",
           f"<p>{_summary(e)} &middot; colour scale &plusmn;{scale:.3g} (red adds to the similarity, blue takes "
           f"away)</p>", "<table class='simattr'><tr><th></th>"]
    out += [f"<th class='b'>{t}</th>" for t in tb] + ["<th class='b'>&Sigma; row</th>"]
    out.append("<th class='b'>first order</th></tr>" if first else "</tr>")
    cell = lambda v, sc, tip, cls="": (f"<td{cls} style='background:{_colour(v, sc)}' title='{tip}: {v:.6g}'>"
                                       f"{v:.{digits}f}</td>")
    for i, t in enumerate(ta):
        out.append(f"<tr><th style='text-align:right'>{t}</th>")
        out += [cell(m[i, j], scale, f"{t} &times; {tb[j]}") for j in range(m.shape[1])]
        out.append(cell(rows[i], side_scale, t, " class='sum'"))
        if first:
            out.append(cell(first[0][i], side_scale, f"{t} against b's reference", " class='sum'"))
        out.append("</tr>")
    out.append("<tr class='sum'><th style='text-align:right'>&Sigma; column</th>")
    out += [cell(c, side_scale, tb[j]) for j, c in enumerate(cols)]
    out.append(f"<td class='sum'>{m.sum():.{digits}f}</td>" + ("<td class='sum'></td>" if first else "") + "</tr>")
    if first:
        d = e.decomposition
        out.append("<tr class='sum'><th style='text-align:right'>first order</th>")
        out += [cell(c, side_scale, f"{tb[j]} against a's reference") for j, c in enumerate(first[1])]
        out.append(f"<td class='sum'></td><td class='sum' title='baseline s(r_a, r_b)'>"
                   f"{d['baseline']:.{digits}f}</td></tr>")
    out.append("</table>")
    if first:
        out.append("<p>The score is the baseline s(r<sub>a</sub>, r<sub>b</sub>) (bottom right) + the first-order "
                   "terms (what each token adds against the other text's reference) + the matrix.</p>")
    top = e.top_interactions(10)
    if top:
        out.append("<p>Strongest pairs:</p><ol>")
        out += [f"<li>{esc(str(it['token_a']))} ({it['i']}) &harr; {esc(str(it['token_b']))} ({it['j']}): "
                f"{it['value']:+.5f}</li>" for it in top]
        out.append("</ol>")
    out.append("</body></html>")
    return write_page("\n".join(out), path)


def write_page(page: str, path=None) -> str:
    """An HTML page written (atomically) to `path` if given; returned either way."""
    if path is not None:
        write_atomic(path, lambda fh: fh.write(page), "HTML file")
    return page


#: what `to_png` writes, by the file name's extension (none: png)
PICTURE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def new_figure(path, figsize):
    """(a matplotlib Figure on the Agg canvas, the picture format of `path`'s extension), after checking that
    matplotlib is there, the file can be written and the format is one of PICTURE_FORMATS. No pyplot: the user's
    backend stays as it is."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SimattrError("to_png needs matplotlib (pip install matplotlib)") from None
    check_writable(path, "picture file")
    kind = os.path.splitext(os.fspath(path))[1].lower().lstrip(".") or "png"
    if kind not in PICTURE_FORMATS:
        raise SimattrError(f"to_png writes {', '.join(PICTURE_FORMATS)} (by the file's extension), not {kind!r}")
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, kind


def save_figure(fig, path, kind: str, dpi: int):
    """`fig` written atomically to `path` in `kind`."""
    write_atomic(path, lambda fh: fig.savefig(fh, dpi=dpi, format=kind), f"{kind.upper()} file", binary=True)
    return path


def to_png(e, path, dpi: int = 150, title: str = None):
    """The matrix as a heatmap picture: PNG, or SVG / PDF / JPEG by the file's extension (needs matplotlib)."""
    m = np.asarray(e.matrix, dtype=np.float64)
    scale = float(np.abs(m).max()) or 1.0
    h, w = m.shape
    first = e.first_order()
    fig, kind = new_figure(path, (max(4.0, 0.35 * w + 2.5 + (0.6 if first else 0)),
                                  max(3.0, 0.3 * h + 1.8 + (0.5 if first else 0))))
    if first:  # the matrix, its first-order column (a's tokens) and row (b's tokens), one colour scale each
        grid = fig.add_gridspec(2, 3, width_ratios=[max(w, 1), 1, 0.4], height_ratios=[max(h, 1), 1], wspace=0.08,
                                hspace=0.05)
        ax = fig.add_subplot(grid[0, 0])
        col, row = fig.add_subplot(grid[0, 1]), fig.add_subplot(grid[1, 0])
        scale = max(scale, float(np.abs(first[0]).max(initial=0)), float(np.abs(first[1]).max(initial=0)))
        col.imshow(first[0][:, None], cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")  # one scale: the bar's
        row.imshow(first[1][None, :], cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
        col.set_xticks([0], ["1st order"], rotation=90, fontsize=8)
        col.set_yticks([])
        row.set_yticks([0], ["1st order"], fontsize=8)
        row.set_xticks(range(w), [str(t) for t in e.tokens_b], rotation=90, fontsize=8)
    else:
        ax = fig.add_subplot()
    im = ax.imshow(m, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto")
    split = e.extras.get("split")  # a contrast: document 1's columns, then document 2's
    if isinstance(split, int) and 0 < split < w:
        for axis in (ax, row) if first else (ax,):
            axis.axvline(split - 0.5, color="black", linewidth=1.2)
    if first:
        ax.set_xticks([])
    else:
        ax.set_xticks(range(w), [str(t) for t in e.tokens_b], rotation=90, fontsize=8)
    ax.set_yticks(range(h), [str(t) for t in e.tokens_a], fontsize=8)
    d = e.decomposition
    heading = f"{e.method}: score {e.score:.4f}, ΣA {e.total:.4f}"
    if d is not None and "baseline" in d and "bias" not in d:
        heading += (f"\nscore = baseline {d['baseline']:.3f} + 1st order {d['first_order_sum_a']:+.3f} "
                    f"{d['first_order_sum_b']:+.3f} + ΣA {d['interactions']:+.3f}")
    elif d is not None and "bias" in d:
        heading += f"\nscore = ΣA {d['interactions']:.3f} + biases {d['bias']:+.3f}"
    ax.set_title(title or heading, fontsize=9)
    if first:
        fig.colorbar(im, cax=fig.add_subplot(grid[0, 2]))
    else:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if not first:
        fig.tight_layout()
    else:
        fig.subplots_adjust(left=0.2, bottom=0.2, right=0.92, top=0.88)
    return save_figure(fig, path, kind, dpi)
