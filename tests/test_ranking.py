"""Rankings explained: `Explainer.rank` orders documents as sentence-transformers' encode + similarity does and
explains the top K in one job (the query's G once); `Explainer.contrast` is exactly the difference of the two
explanations, its decomposition the difference of theirs; the command lines `simattr rank` and `simattr contrast`."""
from __future__ import annotations

import json

import numpy as np
import pytest

import simattr
from simattr.cli import main
from simattr.encoders.loading import default_model_path

QUERY = "a person playing music"
DOCS = ["A man plays a guitar on stage.", "The cat sleeps on the sofa.", "Someone is playing an instrument.",
        "Stock prices fell."]


def test_rank_orders_as_the_model_scores_and_explains_the_top(explainer):
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(default_model_path()), device="cpu")
    emb = st.encode([QUERY] + DOCS, convert_to_tensor=True)
    want = st.similarity(emb[:1], emb[1:])[0].tolist()
    r = explainer.rank(QUERY, DOCS, top_k=2, steps=8)
    np.testing.assert_allclose(r.scores, want, atol=1e-5)
    assert r.order == sorted(range(len(DOCS)), key=lambda i: -want[i])
    assert len(r.explanations) == 2
    for e, i in zip(r.explanations, r.order):
        one = explainer.explain(QUERY, DOCS[i], steps=8)
        np.testing.assert_allclose(e.matrix, one.matrix, atol=1e-6)
        assert e.score == pytest.approx(r.scores[i], abs=1e-5)
    assert r.explanations[1].extras["job"]["texts"] == 3  # one query, two documents: the query's G once
    assert explainer.rank(QUERY, DOCS, explain=False).explanations == []
    with pytest.raises(simattr.SimattrError, match="top_k must be a non-negative integer"):
        explainer.rank(QUERY, DOCS, top_k=-1)
    with pytest.raises(simattr.SimattrError, match="no_such_option"):
        explainer.rank(QUERY, DOCS, no_such_option=1)


@pytest.mark.parametrize("method", ["ij", "bilrp", "maxsim"])
def test_a_contrast_is_the_difference_of_two_explanations(explainer, method):
    opts = {"steps": 16} if method == "ij" else {}
    c = explainer.contrast(QUERY, DOCS[0], DOCS[1], method=method, **opts)
    e1, e2 = (explainer.explain(QUERY, d, method=method, **opts) for d in DOCS[:2])
    n1 = len(e1.tokens_b)
    np.testing.assert_allclose(c.matrix[:, :n1], e1.matrix, atol=1e-6)
    np.testing.assert_allclose(c.matrix[:, n1:], -e2.matrix, atol=1e-6)
    assert c.score == pytest.approx(e1.score - e2.score, abs=1e-6)
    assert c.tokens_b[0].startswith("1:") and c.tokens_b[n1].startswith("2:")
    if method in ("ij", "bilrp"):
        d = c.decomposition
        assert d["score"] == pytest.approx(e1.score - e2.score, abs=1e-6)
        assert d["error"] <= (e1.decomposition["error"] + e2.decomposition["error"]) + 1e-9
    if method == "ij":
        np.testing.assert_allclose(c.decomposition["first_order_a"], np.subtract(
            e1.decomposition["first_order_a"], e2.decomposition["first_order_a"]), atol=1e-6)


def test_rank_and_contrast_on_the_command_line(tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n\n")
    assert main(["rank", QUERY, "--docs", str(docs), "--top-k", "2", "--explain", "--method", "bilrp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["index"] for row in out["ranking"][:2]] == [2, 0] and len(out["explanations"]) == 2
    png = tmp_path / "c.png"
    assert main(["contrast", QUERY, DOCS[0], DOCS[1], "--method", "bilrp", "--png", str(png), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c["method"] == "contrast" and png.stat().st_size > 1000
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["rank", QUERY, "--docs", str(empty)]) == 2
    assert "holds no document" in capsys.readouterr().err
