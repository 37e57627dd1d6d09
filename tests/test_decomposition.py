"""The score itself decomposed: s(a,b) = s(r_a,r_b) + Σ m_a + Σ m_b + Σ A with m_a = G_aᵀ f(r_b), m_b = G_bᵀ f(r_a),
exact up to the quadrature error; the first-order terms against an independent per-dimension loop (tests/
reference_loop.py: one backward pass per embedding dimension), on MiniLM with three references, on
all-mpnet-base-v2, in every mode; BiLRP's in the same terms (interactions + the biases' share); the report, HTML and
PNG show it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import simattr
from simattr import quadrature as quad
from tests.reference_loop import per_dimension_loop

A, B = "A man is playing a guitar.", "Someone plays an instrument."


def _reference_first_order(ex, a, b, reference, steps):
    """(m_a, m_b, s(r_a, r_b)) by the per-dimension loop: G of each text over its tokens, times the other's f(r)."""
    from simattr.references import reference as make_reference
    out = {}
    for name, enc, text in (("a", ex.encoder_a, a), ("b", ex.encoder_b, b)):
        t = enc.tokenize(text)
        x = enc.hidden(t, 0)
        r = make_reference(enc, t, 0, reference, x=x)
        with enc.prepared():
            f = enc.function(t, 0, normalize=True)
            al, w = quad.nodes("riemann_midpoint", steps)
            G = per_dimension_loop(f, x, r, al, w)
            with torch.no_grad():
                fr = f(r)[0].double()
        out[name] = (G, fr)
    (Ga, fra), (Gb, frb) = out["a"], out["b"]
    return (Ga.T @ frb).numpy(), (Gb.T @ fra).numpy(), float(fra @ frb)


@pytest.mark.parametrize("reference", ["pad", "zero", "a sentence about nothing"])
def test_the_score_is_baseline_plus_first_order_plus_interactions(explainer, reference):
    e = explainer.explain(A, B, reference=reference)  # steps="auto"
    d = e.decomposition
    assert d["sum"] == pytest.approx(d["baseline"] + d["first_order_sum_a"] + d["first_order_sum_b"] + e.total)
    assert d["error"] == pytest.approx(abs(e.score - d["sum"]), abs=1e-12)
    assert d["error"] < 1e-3 and d["baseline"] == pytest.approx(e.terms["s(r_a,r_b)"])
    # the first-order terms against the per-dimension loop on the same nodes (4 midpoint steps: any rule will do)
    few = explainer.explain(A, B, steps=4, reference=reference).decomposition
    m_a, m_b, base = _reference_first_order(explainer, A, B, reference, 4)
    np.testing.assert_allclose(few["first_order_a"], m_a, atol=2e-5)
    np.testing.assert_allclose(few["first_order_b"], m_b, atol=2e-5)
    assert few["baseline"] == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("mode", ["forward", "reverse", "cross"])
def test_every_mode_gives_the_same_decomposition(explainer, mode):
    ref = explainer.explain(A, B, steps=8, mode="forward").decomposition
    d = explainer.explain(A, B, steps=8, mode=mode).decomposition
    for key in ("first_order_a", "first_order_b"):
        np.testing.assert_allclose(d[key], ref[key], atol=1e-6)
    many = explainer.explain_many([A, "A woman plays the violin."], B, steps=8)  # one text's G, cross passes
    for e in many:
        assert e.decomposition["error"] == pytest.approx(abs(e.score - e.decomposition["sum"]))
        assert e.decomposition["error"] < 5e-2


def test_bilrp_says_what_the_biases_hold(explainer):
    e = explainer.explain(A, B, method="bilrp")
    d = e.decomposition
    assert d["interactions"] == pytest.approx(e.total)
    assert d["interactions"] + d["bias"] + d["rounding"] == pytest.approx(e.score, abs=1e-9)
    assert d["bias"] == pytest.approx(e.extras["bias_term"])
    exact = explainer.explain(A, B, method="bilrp", bias="redistribute-abs").decomposition
    assert abs(exact["bias"]) < 1e-4  # the biases' share handed back to the inputs


@pytest.mark.mpnet
def test_mpnet_decomposition(mpnet):
    e = mpnet.explain(A, B, steps=16, layer=10)
    d = e.decomposition
    assert d["error"] < 5e-3 and abs(d["first_order_sum_a"]) > 1e-3


def test_report_html_and_png_show_it(explainer, tmp_path):
    e = explainer.explain(A, B, steps=8)
    text = e.format()
    assert "baseline s(r_a,r_b)" in text and "1st order" in text
    page = e.to_html(tmp_path / "e.html")
    assert "first order" in page and "baseline" in page
    e.to_png(tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 1000
    back = simattr.Explanation.from_json(e.to_json())  # the decomposition survives JSON
    assert back.decomposition["first_order_a"] == pytest.approx(e.decomposition["first_order_a"])
    assert back.first_order() is not None
