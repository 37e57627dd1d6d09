"""Pictures of an explanation (simattr/viz.py): HTML heatmap, PNG, Jupyter display, CLI flags."""
import re

import numpy as np
import pytest

from simattr import Explanation
from simattr.cli import main
from simattr.viz import _colour


def _explanation():
    m = np.array([[0.5, -0.25, 0.0], [0.125, 0.0, -0.5]])
    return Explanation(method="ij", matrix=m, tokens_a=["<s>", "cat & dog"], tokens_b=["[CLS]", "a", "'quoted'"],
                       score=0.42, terms={}, error=1e-3)


def test_html_cells_values_sums_and_escaping(tmp_path):
    e = _explanation()
    page = e.to_html(tmp_path / "e.html")
    assert (tmp_path / "e.html").read_text(encoding="utf-8") == page
    assert "<s>" not in page and "&lt;s&gt;" in page and "cat &amp; dog" in page and "&#x27;quoted&#x27;" in page
    cells = re.findall(r"<td style='background:(#[0-9a-f]{6})' title='[^']*: ([-0-9.e+]+)'>", page)
    # six matrix cells and three column sums; row sums and the total carry class='sum'
    assert len(cells) == 6 + 3
    values = [float(v) for _, v in cells[:6]]
    assert values == [0.5, -0.25, 0.0, 0.125, 0.0, -0.5]
    colours = dict(zip(values, (c for c, _ in cells[:6])))
    assert colours[0.0] == "#ffffff" and colours[0.5] == _colour(0.5, 0.5) and colours[-0.5] == _colour(-0.5, 0.5)
    assert colours[0.5][1:3] == "ff" and colours[-0.5][-2:] == "ff"  # red for +, blue for -
    assert "-0.250" in page and "0.250" in page  # row sum of "<s>" (0.5 - 0.25) and the formatted cells
    assert "score 0.4200" in page and "error 1.00e-03" in page
    assert e._repr_html_() == page
    e.method = "<b>x</b>"  # e.g. read back from a JSON line: escaped like the tokens
    assert "<b>x" not in e.to_html() and "&lt;b&gt;x" in e.to_html()


def test_colour_scale():
    assert _colour(0.0, 1.0) == "#ffffff"
    assert _colour(2.0, 1.0) == _colour(1.0, 1.0)  # clipped
    assert _colour(1.0, 0.0) == "#ffffff"  # an all-zero matrix has no scale


def test_png(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    backend = matplotlib.get_backend()
    path = _explanation().to_png(tmp_path / "e.png")
    assert matplotlib.get_backend() == backend  # the user's (e.g. Jupyter's) backend is left alone
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_cli_writes_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    html_path, png_path = tmp_path / "a.html", tmp_path / "a.png"
    assert main(["explain", "a cat", "a dog", "--method", "maxsim", "--html", str(html_path),
                 "--png", str(png_path)]) == 0
    assert "strongest" in capsys.readouterr().out
    assert "[CLS]" in html_path.read_text(encoding="utf-8") and png_path.read_bytes()[:4] == b"\x89PNG"


def test_jupyter_falls_back_to_text_for_big_matrices():
    big = Explanation(method="ij", matrix=np.zeros((200, 200)), tokens_a=[f"a{i}" for i in range(200)],
                      tokens_b=[f"b{i}" for i in range(200)], score=0.0)
    shown = big._repr_html_()
    assert shown.startswith("<pre>") and "200 x 200" in shown and len(shown) < 10000
