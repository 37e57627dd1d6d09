"""Late-interaction (ColBERT) models: a PyLate checkpoint and a sentence-transformers MultiVectorEncoder load as they
are ([Q]/[D] prefixes, query expansion with mask tokens, the punctuation skiplist, the projection head); MaxSim
equals PyLate's colbert_scores (recorded from pylate itself, tests/fixtures/pylate-minilm) and sentence-transformers'
own similarity, padded batches included; IJ and BiLRP decompose the late-interaction score itself."""
from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

import simattr
from simattr.encoders.loading import default_model_path
from tests import pylate_fixture

st_lib = pytest.importorskip("sentence_transformers")
if not hasattr(st_lib, "MultiVectorEncoder"):
    pytest.skip("sentence-transformers without MultiVectorEncoder (< 6)", allow_module_level=True)

REF = pylate_fixture.reference()


@pytest.fixture(scope="module")
def pylate_dir(tmp_path_factory) -> Path:
    """The PyLate checkpoint of the fixture, assembled from the bundled all-MiniLM-L6-v2 (see its README)."""
    return pylate_fixture.assemble(tmp_path_factory.mktemp("pylate") / "colbert-minilm")


@pytest.fixture(scope="module")
def colbert(pylate_dir):
    return simattr.Explainer(str(pylate_dir))


def test_a_pylate_checkpoint_loads_and_its_maxsim_is_pylate_s(colbert, pylate_dir):
    ex = colbert
    assert (ex.encoder_a.task, ex.encoder_b.task) == ("query", "document")
    for q, d, want, qs, ds in zip(REF["queries"], REF["documents"], REF["colbert_scores"], REF["query_shapes"],
                                  REF["document_shapes"]):
        e = ex.explain(q, d, method="maxsim")
        assert e.score == pytest.approx(want, abs=2e-5)  # pylate.scores.colbert_scores, recorded
        assert list(e.matrix.shape) == [qs[0], ds[0]]  # query expanded to 16 with [MASK]; punctuation skipped
        assert e.tokens_a[1] == "[q] " and e.tokens_a[-1] == "[MASK]" and e.tokens_b[1] == "[d] "
        assert not any(t in string.punctuation for t in e.tokens_b)
    mve = st_lib.MultiVectorEncoder(str(pylate_dir), device="cpu")
    Q, D = mve.encode_query(REF["queries"]), mve.encode_document(REF["documents"])
    ours = ex.explain_many(REF["queries"], REF["documents"], method="maxsim")  # one padded batch
    for k, e in enumerate(ours):
        assert e.score == pytest.approx(float(mve.similarity(Q[k:k + 1], D[k:k + 1])[0, 0]), abs=2e-5)
        assert e.score == pytest.approx(REF["colbert_scores"][k], abs=2e-5)


def test_padding_never_wins_a_max():
    """A padded batch where every real similarity of a query token is negative: PyLate's unmasked colbert_scores
    lets a padded (zero) document row win that max; simattr's MaxSim takes the max over real tokens only."""
    from simattr.methods.maxsim import maxsim_batch
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(1, 3, 8), dim=-1)
    short = -q[:, :2]  # a document whose tokens are the negated query tokens: real cosines all ≤ 0 for them
    long = torch.nn.functional.normalize(torch.randn(1, 5, 8), dim=-1)
    C = torch.zeros(2, 5, 8)
    C[0, :2], C[1] = short[0], long[0]
    cmask = torch.tensor([[True, True, False, False, False], [True] * 5])
    scores, values, _ = maxsim_batch(q.expand(2, -1, -1), None, C, cmask, backend="torch")
    for b, doc in enumerate((short[0], long[0])):
        assert float(scores[b]) == pytest.approx(float((q[0] @ doc.T).max(1).values.sum()), abs=1e-6)
    unmasked = (q[0] @ C[0].T).max(1).values.sum()  # what padding does without the mask
    assert float(unmasked) > float(scores[0]) + 1e-3


def test_ij_and_bilrp_decompose_the_late_interaction_score(colbert):
    """The MaxSim score s = Σ_i max_j q_i·d_j, with the argmax fixed at the input, is a bilinear form of the two
    towers' token vectors: IJ's matrix completes to s_π(a,b) − s_π(a,r_b) − s_π(r_a,b) + s_π(r_a,r_b)."""
    q, d = REF["queries"][0], REF["documents"][0]
    ij = colbert.explain(q, d)
    assert ij.score == pytest.approx(REF["colbert_scores"][0], abs=2e-5)
    target = sum(v * s for v, s in zip(ij.terms.values(), (1, -1, -1, 1)))
    assert ij.total == pytest.approx(target, abs=1e-3) and ij.error < 1e-3 and ij.extras["converged"]
    match = ij.extras["late_interaction"]["match"]
    maxsim = colbert.explain(q, d, method="maxsim")
    assert match == [a["j"] for a in maxsim.extras["alignment"]]  # the same argmax MaxSim shows
    # rows: the query's input tokens ([MASK]s included); columns: every input token of the document, the skipped
    # punctuation too (it is not scored, but the scored tokens' vectors depend on it)
    assert ij.matrix.shape == (16, colbert.encoder_b.tokenize(d).length) and "," in ij.tokens_b
    bilrp = colbert.explain(q, d, method="bilrp", bias="redistribute-abs")
    assert bilrp.score == pytest.approx(REF["colbert_scores"][0], abs=2e-5)
    assert bilrp.extras["conservation"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(simattr.SimattrError, match="scores by MaxSim"):
        colbert.explain(q, d, sim="cosine", steps=2)
    with pytest.raises(simattr.SimattrError, match="late-interaction score needs both"):
        colbert.explain(q, d, mode="cross", steps=2)


def test_completeness_by_an_independent_loop(colbert):
    """The reference: MaxSim with π fixed, evaluated on the model's own vectors (sentence-transformers' modules run
    by hand, not simattr's f) along r → x, integrated with many midpoint steps; simattr's ΣA must match it."""
    from simattr.methods.path import MaxSimForm
    q, d = REF["queries"][1], REF["documents"][1]
    e = colbert.explain(q, d, steps=64)
    ea, eb = colbert.encoder_a, colbert.encoder_b
    ta, tb = ea.tokenize(q), eb.tokenize(d)
    xa, xb = ea.hidden(ta, 0), eb.hidden(tb, 0)
    ra, rb = ea.hidden(ta, 0, input_ids=ea.pad_ids(ta)), eb.hidden(tb, 0, input_ids=eb.pad_ids(tb))

    def vectors(enc, t, x):  # the input of the blocks substituted, then the model and its modules by hand
        h = enc.embeddings.register_forward_hook(lambda m, a, o: x)
        try:
            out = enc.model(input_ids=t.input_ids, attention_mask=t.attention_mask, **t.extra).last_hidden_state
        finally:
            h.remove()
        feats = {"token_embeddings": out, "attention_mask": t.attention_mask, "input_ids": t.input_ids}
        for mod in list(enc.source)[1:]:
            feats = mod(feats, **({"task": enc.task} if "task" in getattr(mod, "forward_kwargs", ()) else {}))
        return feats["token_embeddings"][0, t.scoring]

    with torch.no_grad():
        fa, fb = vectors(ea, ta, xa).flatten(), vectors(eb, tb, xb).flatten()
        form = MaxSimForm(fa, fb, len(ta.scoring), len(tb.scoring), mean=False)
        s = lambda u, v: form.dot(u, v)
        ga, gb = vectors(ea, ta, ra).flatten(), vectors(eb, tb, rb).flatten()
    assert s(fa, fb) == pytest.approx(e.score, abs=2e-5)
    assert e.total == pytest.approx(s(fa, fb) - s(fa, gb) - s(ga, fb) + s(ga, gb), abs=2e-3)


def test_a_native_multi_vector_encoder_with_prompts(tmp_path):
    """A sentence-transformers 6 MultiVectorEncoder built from modules (text prompts as markers, fixed query
    expansion, skiplist): object and saved directory explain what encode_query / encode_document + similarity
    compute."""
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    torch.manual_seed(0)
    t = Transformer(str(default_model_path()), query_expansion={"strategy": "fixed", "attend": False, "length": 12})
    mve = st_lib.MultiVectorEncoder(modules=[t, Dense(384, 48, bias=False, activation_function=torch.nn.Identity(),
                                                      module_input_name="token_embeddings"),
                                             MultiVectorMask(list(string.punctuation)),
                                             Normalize(module_input_name="token_embeddings")],
                                    device="cpu", prompts={"query": "query: ", "document": "passage: "})
    mve.save(str(tmp_path / "mve"))
    q, d = "how long do cats sleep?", "Cats sleep, for most of the day."
    want = float(mve.similarity(mve.encode_query([q]), mve.encode_document([d]))[0, 0])
    for model in (mve, str(tmp_path / "mve")):
        ex = simattr.Explainer(model)
        m = ex.explain(q, d, method="maxsim")
        assert m.score == pytest.approx(want, abs=2e-5)
        ij = ex.explain(q, d)
        assert ij.score == pytest.approx(want, abs=2e-5) and ij.error < 1e-3
        assert "query" not in ij.tokens_a and ij.extras["prompt"]["a"]["text"] == "query: "  # held as context


def test_towers_lengths_and_references_of_a_colbert_model(pylate_dir, colbert):
    """Per side: a is the query and b the document also with a second model or half a task; a document of exactly
    the document length; max_length on both towers; a reference text fitted before a query's expansion tokens;
    a meanmaxsim model's MaxSim is the mean."""
    q, d = REF["queries"][0], REF["documents"][0]
    want = REF["colbert_scores"][0]
    for ex in (simattr.Explainer(str(pylate_dir), str(pylate_dir)), simattr.Explainer(str(pylate_dir),
                                                                                       task=("query", None))):
        assert (ex.encoder_a.task, ex.encoder_b.task) == ("query", "document")
        assert ex.explain(q, d, method="maxsim").score == pytest.approx(want, abs=2e-5)
    full = " ".join(["cat"] * 61)  # [CLS] [D] + 61 + [SEP] = 64 = document_length
    assert colbert.explain("cats", full, method="maxsim").matrix.shape[1] == 64
    short = simattr.Explainer(str(pylate_dir), max_length=8)
    assert short.encoder_b.max_length == 8
    with pytest.raises(simattr.SimattrError, match="over the model's document length of 8"):
        short.explain(q, d, method="maxsim")
    e = colbert.explain(q, d, steps=2, reference="a dog runs")
    expansion = [k for k, t in enumerate(e.tokens_a) if t == "[MASK]"]
    assert expansion and abs(e.matrix[expansion].sum()) < 1e-6  # the expansion tokens stay the model's
    mve = st_lib.MultiVectorEncoder(str(pylate_dir), device="cpu")
    mve.similarity_fn_name = "meanmaxsim"
    mean = simattr.Explainer(mve)
    ref = float(mve.similarity(mve.encode_query([q]), mve.encode_document([d]))[0, 0])
    for method in ("maxsim", "bilrp"):
        assert mean.explain(q, d, method=method).score == pytest.approx(ref, abs=2e-6)
