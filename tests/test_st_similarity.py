"""sentence-transformers' similarity function (similarity_fn_name) is the one the path methods decompose by default
(sim="auto"): cosine and dot as the model scores them, a distance refused with the reason."""
from __future__ import annotations

import json
import shutil

import pytest

import simattr
from simattr.encoders.loading import default_model_path


def _model_with(tmp_path, fn):
    m = tmp_path / f"model-{fn}"
    shutil.copytree(default_model_path(), m)
    cfg = m / "config_sentence_transformers.json"
    data = json.loads(cfg.read_text()) if cfg.exists() else {}
    data["similarity_fn_name"] = fn
    cfg.write_text(json.dumps(data))
    return m


@pytest.mark.parametrize("fn,sim", [("dot", "dot"), ("cosine", "cosine")])
def test_the_model_s_similarity_is_decomposed(tmp_path, fn, sim):
    st = pytest.importorskip("sentence_transformers")
    path = _model_with(tmp_path, fn)
    for model in (str(path), st.SentenceTransformer(str(path), device="cpu")):
        e = simattr.Explainer(model).explain("A man is playing a guitar.", "Someone plays an instrument.",
                                              method="bilrp")
        assert e.settings["sim"] == sim
    ref = st.SentenceTransformer(str(path), device="cpu")
    emb = ref.encode(["A man is playing a guitar.", "Someone plays an instrument."], convert_to_tensor=True)
    assert e.score == pytest.approx(float(ref.similarity(emb[:1], emb[1:])[0, 0]), abs=1e-5)


def test_a_distance_is_refused_unless_a_product_is_asked_for(tmp_path):
    ex = simattr.Explainer(str(_model_with(tmp_path, "euclidean")))
    with pytest.raises(simattr.SimattrError, match="scores pairs by euclidean distance.*pass sim='cosine'"):
        ex.explain("a cat", "a dog", steps=2)
    assert ex.explain("a cat", "a dog", steps=2, sim="cosine").settings["sim"] == "cosine"
    assert ex.explain("a cat", "a dog", method="maxsim").score > 0  # the set-based methods do not use it


def test_truncate_dim_is_what_sentence_transformers_scores(tmp_path):
    """Matryoshka truncation: the score and the decomposed similarity are those of the first k dimensions, as
    SentenceTransformer(truncate_dim=k).encode + similarity gives them; IJ's completeness holds for it."""
    st = pytest.importorskip("sentence_transformers")
    a, b = "A man is playing a guitar.", "Someone plays an instrument."
    ref = st.SentenceTransformer(str(default_model_path()), device="cpu", truncate_dim=64)
    emb = ref.encode([a, b], convert_to_tensor=True)
    want = float(ref.similarity(emb[:1], emb[1:])[0, 0])
    full = simattr.Explainer().explain(a, b, method="bilrp").score
    assert abs(full - want) > 1e-3  # truncation changes the score
    for ex in (simattr.Explainer(truncate_dim=64), simattr.Explainer(ref)):
        e = ex.explain(a, b, method="bilrp")
        assert e.score == pytest.approx(want, abs=1e-5)
        ij = ex.explain(a, b, steps=32)
        assert ij.score == pytest.approx(want, abs=1e-5) and ij.error < 1e-2
    with pytest.raises(simattr.SimattrError, match="truncate_dim=1000 is larger than the model's 384"):
        simattr.Explainer(truncate_dim=1000).explain(a, b, steps=2)
    with pytest.raises(simattr.SimattrError, match="truncate_dim must be a positive integer"):
        simattr.Explainer(truncate_dim=0)
