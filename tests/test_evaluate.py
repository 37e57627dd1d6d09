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
    f = evaluate.faithfulness(ex, A_TEXT, B_TEXT, e, sim="dot", random_runs=3)
    assert f.pearson == pytest.approx(1.0) and f.spearman == pytest.approx(1.0)
    assert np.isfinite(f.pearson_rows)


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
    Ua, Ub = e.matrix.shape
    for order in evaluate.ORDERS:
        ca, cb = f.curves[order]
        assert len(ca) == Ua + 1 and len(cb) == Ub + 1
        assert ca[0] == pytest.approx(f.occlusion.score, abs=1e-6) and cb[0] == pytest.approx(f.occlusion.score, abs=1e-6)
    # every unit removed: the same end point whatever the order
    assert f.curves["most"][0][-1] == pytest.approx(f.curves["least"][0][-1], abs=1e-6)
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
    with pytest.raises(SimattrError, match="units"):
        evaluate.faithfulness(ex, A_TEXT + " again", B_TEXT, e)  # not the texts it was made with
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
