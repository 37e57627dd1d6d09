"""Set-based explanations: maxsim, bertscore (against the bert-score package), ot (against POT), alignment
post-processing, batching, API option filtering and the CLI."""
import json

import numpy as np
import pytest
import torch

import simattr
from simattr import Explainer, SimattrError
from simattr.align import aggregate, flow_align, max_align, postprocess, trim_special, word_groups
from simattr.embed import token_embeddings
from simattr.encoders import default_model_path, load_encoder
from simattr.explanation import Explanation
from simattr.methods.maxsim import maxsim_batch
from simattr.transport import sinkhorn_log

torch.set_num_threads(min(2, torch.get_num_threads()))

CANDS = ["A man is playing a guitar.", "The cat sat on the mat", "Stocks fell sharply on Monday, analysts said.",
         "unbelievably tokenization splits words"]
REFS = ["Someone plays the guitar on stage!", "A cat is sitting on a rug.", "Markets dropped at the start of the week.",
        "tokenizers split unbelievable words into pieces"]


@pytest.fixture(scope="module")
def ex():
    return Explainer()


@pytest.fixture(scope="module")
def enc(ex):
    return ex.encoder_a


# ---------------------------------------------------------------------- token embeddings
def test_token_embeddings_match_single_runs(enc):
    batch = token_embeddings(enc, CANDS[:3], layer=2)
    for k, text in enumerate(CANDS[:3]):
        tok = enc.tokenize(text)
        ref = enc.hidden(tok, 2)[0]
        assert torch.allclose(batch.row(k), ref, atol=1e-5)
        assert batch.mask[k].sum() == tok.length
    last = token_embeddings(enc, CANDS[0])
    assert last.layer == enc.num_layers
    tok = enc.tokenize(CANDS[0])
    assert torch.allclose(last.row(0), enc.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
                          .last_hidden_state[0], atol=1e-5)
    with pytest.raises(SimattrError):
        token_embeddings(enc, CANDS[0], layer=enc.num_layers + 1)


# ---------------------------------------------------------------------- bertscore vs the bert-score package
bert_score = pytest.importorskip("bert_score")


def _reference_bertscore(idf, num_layers=6, **kw):
    P, R, F = bert_score.score(CANDS, REFS, model_type=str(default_model_path()), num_layers=num_layers, idf=idf,
                               device="cpu", batch_size=8, nthreads=0 if idf else 4, **kw)
    return P.double().numpy(), R.double().numpy(), F.double().numpy()


@pytest.mark.parametrize("idf", [False, True])
def test_bertscore_equals_package(ex, idf):
    P, R, F = _reference_bertscore(idf)
    many = ex.explain_many(CANDS, REFS, method="bertscore", idf=True if idf else None)
    for k, e in enumerate(many):
        s = e.extras["scores"]
        assert abs(s["precision"] - P[k]) < 1e-5 and abs(s["recall"] - R[k]) < 1e-5 and abs(s["f1"] - F[k]) < 1e-5
        assert e.score == s["f1"]
    # one pair at a time gives the same (padding does not leak); idf over a corpus list = idf=True over refs
    one = ex.explain(CANDS[1], REFS[1], method="bertscore", idf=list(REFS) if idf else None)
    assert abs(one.extras["scores"]["f1"] - F[1]) < 1e-5


def test_bertscore_other_layer_and_baseline(ex, tmp_path):
    base = tmp_path / "baseline.tsv"
    base.write_text("LAYER,P,R,F\n" + "\n".join(f"{l},{0.3 + l / 100},{0.31 + l / 100},{0.305 + l / 100}"
                                              for l in range(7)) + "\n")
    P, R, F = _reference_bertscore(False, num_layers=3, rescale_with_baseline=True, lang="en", baseline_path=str(base))
    many = ex.explain_many(CANDS, REFS, method="bertscore", layer=3, baseline=str(base))
    for k, e in enumerate(many):
        s = e.extras["scores"]
        assert abs(s["precision"] - P[k]) < 1e-5 and abs(s["recall"] - R[k]) < 1e-5 and abs(s["f1"] - F[k]) < 1e-5
        raw = e.extras["raw_scores"]
        assert abs(s["f1"] - (raw["f1"] - 0.335) / (1 - 0.335)) < 1e-12
        assert abs(s["precision"] - (raw["precision"] - 0.33) / (1 - 0.33)) < 1e-12
    e2 = ex.explain(CANDS[0], REFS[0], method="bertscore", layer=3, baseline=(0.33, 0.34, 0.335))
    assert abs(e2.extras["scores"]["recall"] - R[0]) < 1e-5


def test_bertscore_explanation_structure(ex):
    e = ex.explain(CANDS[0], REFS[0], method="bertscore")
    S = e.matrix
    w = np.array(e.extras["weights_a"])
    assert w[0] == 0 and w[-1] == 0  # [CLS], [SEP]
    assert abs((w * S.max(1)).sum() - e.extras["scores"]["precision"]) < 1e-6
    for p in e.extras["alignment"]["precision"]:
        assert p["j"] == int(np.argmax(S[p["i"]]))
    for p in e.extras["alignment"]["recall"]:
        assert p["i"] == int(np.argmax(S[:, p["j"]]))
    d = json.loads(e.to_json())
    assert set(d) >= {"method", "score", "matrix", "tokens_a", "tokens_b", "settings", "scores", "alignment"}
    assert set(d["scores"]) == {"precision", "recall", "f1"}
    with pytest.raises(SimattrError):  # idf over a single reference: every weight of b is 0
        ex.explain(CANDS[0], REFS[0], method="bertscore", idf=True)


# ---------------------------------------------------------------------- maxsim
def test_maxsim_explanation(ex):
    e = ex.explain(CANDS[0], REFS[0], method="maxsim")
    S = e.matrix
    assert abs(S.max(1).sum() - e.score) < 1e-5
    assert abs(sum(e.extras["contributions"]) - e.score) < 1e-9
    assert [p["j"] for p in e.extras["alignment"]] == list(S.argmax(1))
    assert np.all(np.abs(np.diag(ex.explain(CANDS[0], CANDS[0], method="maxsim").matrix) - 1) < 1e-5)
    # skiplist: no query token may align with punctuation of the document
    sk = ex.explain(CANDS[0], REFS[0], method="maxsim", skiplist=True)
    assert all(p["token_b"] not in ("!", ".") for p in sk.extras["alignment"])
    assert sk.extras["document_mask"][sk.tokens_b.index("!")] is False
    assert sk.score <= e.score + 1e-9
    # without special tokens, fewer terms; without normalisation, raw dot products
    ns = ex.explain(CANDS[0], REFS[0], method="maxsim", special=False)
    assert ns.extras["contributions"][0] == 0 and ns.extras["contributions"][-1] == 0
    raw = ex.explain(CANDS[0], REFS[0], method="maxsim", normalize=False)
    assert raw.score > 10 * e.score  # token vectors of MiniLM have norms well above 1


def test_maxsim_batch_one_query_many_documents(ex):
    many = ex.explain_many(CANDS[0], REFS, method="maxsim")
    for k, e in enumerate(many):
        single = ex.explain(CANDS[0], REFS[k], method="maxsim")
        assert abs(single.score - e.score) < 1e-5
        assert np.allclose(single.matrix, e.matrix, atol=1e-5)
    best = int(np.argmax([e.score for e in many]))
    assert best == 0  # the guitar document
    # tensor API
    Q, C = torch.randn(1, 3, 8), torch.randn(4, 5, 8)
    scores, values, index = maxsim_batch(Q, None, C, None, backend="torch")
    S = torch.einsum("ik,bjk->bij", Q[0], C)
    assert torch.allclose(scores, S.max(-1).values.sum(-1), atol=1e-5)


def test_query_and_document_towers():
    enc_q = load_encoder(None)
    enc_d = load_encoder(None)
    with torch.no_grad():
        enc_d.model.embeddings.word_embeddings.weight.mul_(1.5)
    e = simattr.explain(CANDS[0], REFS[0], model=enc_q, model_b=enc_d, method="maxsim")
    q = token_embeddings(enc_q, CANDS[0]).row(0)
    d = token_embeddings(enc_d, REFS[0]).row(0)
    q, d = q / q.norm(dim=-1, keepdim=True), d / d.norm(dim=-1, keepdim=True)
    assert np.allclose(e.matrix, (q @ d.T).numpy(), atol=1e-5)
    same = simattr.explain(CANDS[0], REFS[0], model=enc_q, method="maxsim")
    assert not np.allclose(same.matrix, e.matrix, atol=1e-3)


# ---------------------------------------------------------------------- optimal transport
ot = pytest.importorskip("ot")


def test_sinkhorn_tends_to_exact_plan():
    g = torch.Generator().manual_seed(0)
    C = torch.rand(7, 9, generator=g, dtype=torch.float64)
    a = torch.rand(7, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(9, generator=g, dtype=torch.float64) + 0.2
    a, b = a / a.sum(), b / b.sum()
    exact = torch.from_numpy(ot.emd(a.numpy(), b.numpy(), C.numpy()))
    exact_cost = float((exact * C).sum())
    gaps = []
    for eps in (0.1, 0.01, 0.001):
        P, info = sinkhorn_log(C, a, b, eps=eps, max_iter=50000, tol=1e-10)
        assert info["marginal_error"] < 1e-8
        gaps.append(float((P[0] - exact).abs().sum()))
        assert float((P[0] * C).sum()) >= exact_cost - 1e-9
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2
    P, _ = sinkhorn_log(C, a, b, eps=0.001, max_iter=50000, tol=1e-10)
    assert abs(float((P[0] * C).sum()) - exact_cost) < 1e-3


def test_sinkhorn_batched_with_padding():
    g = torch.Generator().manual_seed(1)
    Cs = [torch.rand(n, m, generator=g, dtype=torch.float64) for n, m in ((3, 5), (6, 2), (4, 4))]
    N, M = 6, 5
    C = torch.zeros(3, N, M, dtype=torch.float64)
    a = torch.zeros(3, N, dtype=torch.float64)
    b = torch.zeros(3, M, dtype=torch.float64)
    for k, c in enumerate(Cs):
        C[k, : c.shape[0], : c.shape[1]] = c
        a[k, : c.shape[0]] = 1.0 / c.shape[0]
        b[k, : c.shape[1]] = 1.0 / c.shape[1]
    P, _ = sinkhorn_log(C, a, b, eps=0.05, tol=1e-12, max_iter=5000)
    for k, c in enumerate(Cs):
        n, m = c.shape
        single, _ = sinkhorn_log(c, a[k, :n], b[k, :m], eps=0.05, tol=1e-12, max_iter=5000)
        assert torch.allclose(P[k, :n, :m], single[0], atol=1e-10)
        assert P[k, n:].abs().sum() == 0 and P[k, :, m:].abs().sum() == 0


def test_ot_explanation(ex):
    emd = ex.explain(CANDS[0], REFS[0], method="ot", solver="emd")
    sk = ex.explain(CANDS[0], REFS[0], method="ot", solver="sinkhorn", eps=0.003, max_iter=8000, tol=1e-8)
    assert abs(emd.matrix.sum() - 1) < 1e-9
    assert abs(emd.score - sk.score) < 5e-3 and sk.score >= emd.score - 1e-9
    # special tokens carry no mass by default; the WMD is the plan's cost
    assert emd.matrix[0].sum() == 0 and emd.matrix[:, -1].sum() == 0
    assert abs(np.sum(emd.extras["contributions"]) - emd.score) < 1e-9
    same = ex.explain(CANDS[0], CANDS[0], method="ot", solver="emd")
    assert same.score < 1e-6 and {(p["i"], p["j"]) for p in same.extras["alignment"]} == \
        {(i, i) for i in range(1, len(same.tokens_a) - 1)}
    idf = ex.explain(CANDS[0], REFS[0], method="ot", solver="emd", mass="idf", idf=CANDS + REFS)
    assert not np.allclose(idf.extras["mass_a"], emd.extras["mass_a"])
    many = ex.explain_many(CANDS, REFS, method="ot", solver="sinkhorn", eps=0.05)
    one = ex.explain(CANDS[2], REFS[2], method="ot", solver="sinkhorn", eps=0.05)
    assert abs(many[2].score - one.score) < 1e-6


# ---------------------------------------------------------------------- alignment post-processing
def test_alignment_helpers():
    M = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.7], [0.1, 0.95, 0.2]])
    assert max_align(M) == [(0, 0), (2, 1)]
    pairs, plan = flow_align(M)
    assert pairs == [(0, 0), (1, 2), (2, 1)] and abs(plan.sum() - 1) < 1e-12
    groups = word_groups(["[CLS]", "play", "##ing", "guitar", "##s", "[SEP]"])
    assert groups == [[0], [1, 2], [3, 4], [5]]
    assert word_groups(["<s>", "▁play", "ing", "▁now", "</s>"]) == [[0], [1, 2], [3], [4]]
    A = np.arange(12.0).reshape(3, 4)
    assert np.array_equal(aggregate(A, [[0, 1], [2]], [[0], [1, 2, 3]], "sum"), [[4, 24], [8, 30]])
    assert np.array_equal(aggregate(A, [[0, 1], [2]], [[0], [1, 2, 3]], "max"), [[4, 7], [8, 11]])
    assert np.allclose(aggregate(A, [[0, 1]], [[1, 2]], "mean"), [[(1 + 2 + 5 + 6) / 4]])
    t, ka, kb = trim_special(A, [True, False, False], [False, False, False, True])
    assert t.shape == (2, 3) and ka == [1, 2] and kb == [0, 1, 2]


def test_postprocess_any_matrix():
    la = ["[CLS]", "play", "##ing", "[SEP]"]
    lb = ["[CLS]", "guitar", "##s", "now", "[SEP]"]
    M = np.arange(20.0).reshape(4, 5)
    e = Explanation(method="ij", matrix=M, tokens_a=la, tokens_b=lb, score=1.0)
    w = postprocess(e, units="word", how="sum", trim=True)
    assert w.tokens_a == ["playing"] and w.tokens_b == ["guitars", "now"]
    assert np.array_equal(w.matrix, [[M[1:3, 1:3].sum(), M[1:3, 3].sum()]])
    assert simattr.align.alignment(w) == [{"i": 0, "j": 0, "token_a": "playing", "token_b": "guitars",
                                           "value": float(M[1:3, 1:3].sum())}]


def test_word_units_for_setbased(ex):
    e = ex.explain(CANDS[3], REFS[3], method="bertscore", units="word")
    assert "unbelievably" in e.tokens_a and "tokenizers" in e.tokens_b
    assert e.matrix.shape == (len(e.tokens_a), len(e.tokens_b))


# ---------------------------------------------------------------------- API and CLI
def test_option_filtering(ex):
    with pytest.raises(SimattrError, match="does not take option 'steps'"):
        ex.explain(CANDS[0], REFS[0], method="maxsim", steps=10)
    with pytest.raises(SimattrError, match="'eps'"):
        ex.explain(CANDS[0], REFS[0], method="bertscore", eps=0.1)
    e = ex.explain(CANDS[0], REFS[0], method="maxsim", soft_options={"steps": 50, "reference": "pad", "units": "token"})
    assert e.method == "maxsim"


def test_cli(capsys):
    from simattr.cli import main
    assert main(["explain", CANDS[0], REFS[0], "--method", "bertscore", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("method", "score", "error", "total", "terms", "tokens_a", "tokens_b", "matrix", "settings", "scores",
                "alignment"):
        assert key in d
    assert d["settings"]["layer"] == 6
    assert main(["explain", CANDS[0], REFS[0], "--method", "maxsim", "--layer", "3", "--skiplist", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["settings"]["layer"] == 3 and d["settings"]["skiplist"] is True and "alignment" in d
    assert main(["explain", CANDS[0], REFS[0], "--method", "ot", "--solver", "sinkhorn"]) == 0
    assert "wmd=" in capsys.readouterr().out
    assert main(["explain", CANDS[0], REFS[0], "--method", "maxsim", "--steps", "5"]) == 2
    assert "does not take option 'steps'" in capsys.readouterr().err
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "maxsim" in info and "auto_cpu" in info["maxsim"]
