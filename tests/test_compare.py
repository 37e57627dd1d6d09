"""Agreement between methods (`Explainer.compare`, `simattr explain --method ... --compare`): each method's matrix as
it explains alone, the rank correlations of the matrices, each one's faithfulness by occlusion."""
from __future__ import annotations

import json

import numpy as np
import pytest

import simattr
from simattr.cli import main
from simattr.evaluate import faithfulness

A, B = "A man is playing a guitar.", "Someone plays an instrument."


def _spearman(x, y):
    """pandas' Spearman correlation (average ranks for ties: IJ's [CLS]/[SEP] rows are all zero)."""
    import pandas as pd
    return float(pd.Series(x.ravel()).corr(pd.Series(y.ravel()), method="spearman"))


def test_compare_puts_the_methods_side_by_side(explainer, tmp_path):
    c = explainer.compare(A, B, methods="ij,bilrp,maxsim", steps=8)
    assert list(c.explanations) == ["ij", "bilrp", "maxsim"]
    for m, e in c.explanations.items():
        alone = explainer.explain(A, B, method=m, **({"steps": 8} if m == "ij" else {}))
        np.testing.assert_allclose(e.matrix, alone.matrix, atol=1e-6)
    for key, value in c.spearman.items():
        m1, m2 = key.split(" vs ")
        x, y = c.explanations[m1].matrix, c.explanations[m2].matrix
        assert value == pytest.approx(_spearman(x, y), abs=1e-9)
    f = faithfulness(explainer, A, B, c.explanations["bilrp"])
    assert c.faithfulness["bilrp"]["pearson"] == pytest.approx(f.pearson)
    assert c.faithfulness["ij"]["pearson"] > 0.5  # IJ agrees with occlusion on this pair
    c.to_png(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and "maxsim" in c.to_html(tmp_path / "c.html")
    assert "rank correlation" in c.format()


def test_compare_errors_and_command_line(explainer, capsys):
    with pytest.raises(simattr.SimattrError, match="at least two methods"):
        explainer.compare(A, B, methods=["ij"])
    with pytest.raises(simattr.SimattrError, match="taken by none of bilrp, maxsim"):
        explainer.compare(A, B, methods=["bilrp", "maxsim"], steps=8)
    assert main(["explain", A, B, "--method", "bilrp,maxsim", "--compare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["explanations"]) == {"bilrp", "maxsim"} and "bilrp vs maxsim" in out["spearman"]
    assert main(["explain", A, B, "--method", "ij,bilrp"]) == 2
    assert "several methods go with --compare" in capsys.readouterr().err
