"""Aspects of the embedding: return_factors gives G_a and G_b (G_aᵀ G_b is the matrix); dims= a selection explains
the similarity restricted to those dimensions (equal to Matryoshka truncation under dot, where truncating is the
same restriction), dims= named groups gives each group's matrix and share, and over a partition of all
dimensions the groups' matrices sum to A and their scores to the score."""
from __future__ import annotations

import numpy as np
import pytest

import simattr

A, B = "A man is playing a guitar.", "Someone plays an instrument."
GROUPS = {"first": slice(0, 100), "middle": list(range(100, 250)), "last": range(250, 384)}


@pytest.mark.parametrize("method", ["ij", "bilrp"])
def test_factors_and_a_partition_of_the_dimensions(explainer, method):
    opts = {"steps": 8} if method == "ij" else {}
    full = explainer.explain(A, B, method=method, return_factors=True, **opts)
    Ga, Gb = full.factors["a"], full.factors["b"]
    assert Ga.shape == (384, len(full.tokens_a)) and Gb.shape == (384, len(full.tokens_b))
    np.testing.assert_allclose(Ga.T @ Gb, full.matrix, atol=1e-9)
    assert "factors" not in full.to_json()
    e = explainer.explain(A, B, method=method, dims=GROUPS, **opts)
    aspects = e.extras["aspects"]
    np.testing.assert_allclose(sum(np.asarray(v["matrix"]) for v in aspects.values()), full.matrix, atol=1e-9)
    assert sum(v["score"] for v in aspects.values()) == pytest.approx(e.score, abs=1e-9)
    assert sum(v["share"] for v in aspects.values()) == pytest.approx(1.0, abs=1e-9)
    for name, sel in GROUPS.items():  # each group's matrix from the factors, by hand
        idx = list(range(384))[sel] if isinstance(sel, slice) else list(sel)
        np.testing.assert_allclose(aspects[name]["matrix"], Ga[idx].T @ Gb[idx], atol=1e-9)


def test_a_selection_is_the_restricted_similarity_and_matryoshka_under_dot(explainer):
    sel = explainer.explain(A, B, steps=16, dims=slice(0, 64), sim="dot")
    cut = simattr.Explainer(truncate_dim=64).explain(A, B, steps=16, sim="dot")  # the model's f cut, independently
    np.testing.assert_allclose(sel.matrix, cut.matrix, atol=1e-6)
    assert sel.score == pytest.approx(cut.score, abs=1e-6)
    assert sel.extras["dims"]["share"] == pytest.approx(sel.score / sel.extras["dims"]["full_score"])
    d = sel.decomposition
    assert d["error"] == pytest.approx(abs(sel.score - d["sum"])) and d["error"] < 1e-2


def test_bad_dims_are_clear_errors(explainer):
    with pytest.raises(simattr.SimattrError, match="dimension 400, outside the 384-dimensional embedding"):
        explainer.explain(A, B, steps=2, dims=[0, 400])
    with pytest.raises(simattr.SimattrError, match="option dims"):
        explainer.explain(A, B, steps=2, dims="first")
    with pytest.raises(simattr.SimattrError, match="needs both G's"):
        explainer.explain(A, B, steps=2, dims=slice(0, 8), mode="cross")
    with pytest.raises(simattr.SimattrError, match="names a dimension twice"):
        explainer.explain(A, B, steps=2, dims=[1, 1])
