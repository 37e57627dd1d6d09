"""simattr.evaluate: occlusion interactions and faithfulness of pairwise explanations."""
import numpy as np
import pytest
import torch

import simattr
from simattr import evaluate
from simattr.errors import SimattrError

A_TEXT, B_TEXT = "a cat sat on the mat", "the dog runs home fast"


def linear_encoder(tokenizer):
    """f(x) = W·Σ_s x_s (sum pooling, no normalisation): IJ is exact and equals occlusion for sim='dot'."""
    torch.manual_seed(0)
    table = torch.randn(30522, 16, dtype=torch.float64)
    W = torch.randn(16, 8, dtype=torch.float64)
    return simattr.CallableEncoder(tokenizer, lambda ids, m: table[ids], lambda x, m: (x * m[..., None]).sum(1) @ W)


def test_linear_model_ij_equals_occlusion_interactions(tokenizer):
    """For a linear f and sim='dot', removing u and v interacts exactly by (W(x_u − r_u))·(W(y_v − r_v)) = A[u, v]."""
    ex = simattr.Explainer(linear_encoder(tokenizer))
    e = ex.explain(A_TEXT, B_TEXT, steps=2, sim="dot")
    occ = evaluate.occlusion(ex, A_TEXT, B_TEXT, sim="dot")
    np.testing.assert_allclose(occ.interaction, e.matrix, atol=1e-9)
    f = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, random_runs=3)  # sim="dot" read from the explanation
    assert f.settings["sim"] == "dot" and f.settings["reference"] == "pad"
    assert f.pearson == pytest.approx(1.0) and f.spearman == pytest.approx(1.0)
    # first order: row sums = G_a[:, u]·(f(b) − f(r_b)) = the occlusion interaction of u with all of b, exactly
    np.testing.assert_allclose(f.occlusion.delta_a, e.matrix.sum(1), atol=1e-9)
    np.testing.assert_allclose(f.occlusion.delta_b, e.matrix.sum(0), atol=1e-9)
    assert f.pearson_rows == pytest.approx(1.0)
    # additive model: removing the most relevant units first lowers the interaction fastest
    assert f.auc["most"] < f.auc["random"] < f.auc["least"]


def test_settings_follow_the_explanation(tokenizer):
    """reference / layer / sim default to the explanation's; an explicit argument overrides."""
    ex = simattr.Explainer(linear_encoder(tokenizer))
    e = ex.explain(A_TEXT, B_TEXT, steps=2, sim="dot", reference="zero")
    f = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, random_runs=2)
    assert f.settings["reference"] == "zero" and f.pearson == pytest.approx(1.0)
    other = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, random_runs=2, reference="pad")
    assert other.settings["reference"] == "pad" and other.pearson < 0.99  # not what was explained
    e2 = ex.explain(A_TEXT, B_TEXT, steps=2, sim="dot", reference=simattr.PerSide("zero", "pad"))
    f2 = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e2, random_runs=2)
    assert f2.settings["reference"] == ["zero", "pad"] and f2.pearson == pytest.approx(1.0)


def test_occlusion_matches_explicit_removal(tokenizer, family_encoder):
    """I[u, v] from the batched single-unit occlusions equals removing u and v by hand and embedding again."""
    from simattr.methods.ij import prepare_side
    ex = simattr.Explainer(family_encoder("bert"))
    occ = evaluate.occlusion(ex, A_TEXT, B_TEXT)
    enc = ex.encoder_a
    with enc.prepared():
        sa = prepare_side(enc, A_TEXT, 0, None, "token", True, False)
        sb = prepare_side(enc, B_TEXT, 0, None, "token", True, False)

        def emb(side, drop):
            x = side.x.clone()
            for u in drop:
                cols = side.units.matrix[u].bool()
                x[:, cols] = side.r[:, cols]
            with torch.no_grad():
                return side.f(x)[0].double()
        u, v = 2, 3
        s = lambda da, db: float(emb(sa, da) @ emb(sb, db))
        want = s([], []) - s([u], []) - s([], [v]) + s([u], [v])
    assert occ.interaction[u, v] == pytest.approx(want, abs=1e-6)
    assert occ.score == pytest.approx(s([], []), abs=1e-6)
    assert occ.interaction.shape == (len(occ.labels_a), len(occ.labels_b))


def test_deletion_curves_and_orders(family_encoder):
    ex = simattr.Explainer(family_encoder("bert"))
    e = ex.explain(A_TEXT, B_TEXT, steps=4)
    f = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, random_runs=4, seed=1)
    from simattr.methods.ij import prepare_side
    with ex.encoder_a.prepared():
        sa, sb = (prepare_side(ex.encoder_a, t, 0, None, "token", True, False) for t in (A_TEXT, B_TEXT))
    da, db = (s_.fx.double() - s_.fr.double() for s_ in (sa, sb))
    Ua, Ub = e.matrix.shape
    for order in evaluate.ORDERS:
        ca, cb = f.curves[order]
        assert len(ca) == Ua + 1 and len(cb) == Ub + 1
        # start: f(a)·(f(b) − f(r_b)); every unit removed: f(r_a)·(f(b) − f(r_b)), whatever the order
        assert ca[0] == pytest.approx(float(sa.fx.double() @ db), abs=1e-6)
        assert ca[-1] == pytest.approx(float(sa.fr.double() @ db), abs=1e-6)
        assert cb[0] == pytest.approx(float(sb.fx.double() @ da), abs=1e-6)
    assert f.random_std is not None and f.random_std >= 0
    assert set(f.auc) == set(evaluate.ORDERS)
    assert "faithfulness (ij)" in f.summary()
    d = f.to_dict()
    assert len(d["occlusion"]["interaction"]) == Ua


def test_deletion_order():
    rel = np.array([0.2, -1.0, 3.0, 0.5])
    assert list(evaluate.deletion_order(rel, "most")) == [2, 3, 0, 1]
    assert list(evaluate.deletion_order(rel, "least")) == [1, 0, 3, 2]
    assert sorted(evaluate.deletion_order(rel, "random", np.random.default_rng(0))) == [0, 1, 2, 3]
    with pytest.raises(SimattrError):
        evaluate.deletion_order(rel, "best")


def test_spearman_ranks_with_ties():
    r = evaluate._rank(np.array([3.0, 1.0, 3.0, 2.0]))
    np.testing.assert_allclose(r, [2.5, 0.0, 2.5, 1.0])


def test_errors(family_encoder):
    ex = simattr.Explainer(family_encoder("bert"))
    e = ex.explain(A_TEXT, B_TEXT, steps=2)
    with pytest.raises(SimattrError, match="not of these texts"):
        evaluate.faithfulness(ex, A_TEXT + " again", B_TEXT, e)  # not the texts it was made with
    with pytest.raises(SimattrError, match="not of these texts"):
        evaluate.faithfulness(ex, "a dog sat on the mat", B_TEXT, e)  # same length, other tokens
    e_t = ex.explain(A_TEXT, B_TEXT, steps=2, reference="zero")
    e_t.settings["reference"] = "Tensor"  # a reference the settings cannot restore
    with pytest.raises(SimattrError, match="reference"):
        evaluate.faithfulness(ex, A_TEXT, B_TEXT, e_t)
    with pytest.raises(SimattrError, match="token or word"):
        evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, units="spans")
    with pytest.raises(SimattrError, match="sim"):
        evaluate.occlusion(ex, A_TEXT, B_TEXT, sim="l2")


def test_word_units_and_set_based_explanations(family_encoder):
    ex = simattr.Explainer(family_encoder("bert"))
    e = ex.explain(A_TEXT, B_TEXT, steps=2, units="word")
    f = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, random_runs=2)
    assert f.settings["units"] == "word" and np.isfinite(f.pearson)
    m = ex.explain(A_TEXT, B_TEXT, method="maxsim")
    fm = evaluate.faithfulness(ex, A_TEXT, B_TEXT, m, random_runs=2)
    assert fm.settings["method"] == "maxsim" and fm.occlusion.interaction.shape == m.matrix.shape
