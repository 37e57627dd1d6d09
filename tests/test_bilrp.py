"""BiLRP: engine (forward/reverse) vs a per-dimension modified-backward loop, conservation without biases on
every supported family, the user's model untouched afterwards, bad inputs."""
import copy
import os

import numpy as np
import pytest
import torch

import simattr
from simattr import engine, rules
from simattr.cli import main as cli_main
from simattr.methods.bilrp import modified_function, prepare_side, relevance

from tests.conftest import FAMILIES, tiny_model as _tiny_model

A, B = "a cat sat on the mat", "the dog ran"


def tiny_model(family, seed=0, dtype=torch.float64, layers=2):
    """A small random-initialised encoder of a family (float64: conservation is checked to 1e-8)."""
    return _tiny_model(family, seed=seed, dtype=dtype, layers=layers)


def zero_biases(model):
    n = 0
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data.zero_()
            n += 1
    return n


def brute_force_G(enc, text, layer, sim, rule, dims=None):
    """The authors' way: one full forward and one modified backward (autograd.grad) per embedding dimension k,
    gradient x input summed over the hidden features. Rows `dims` only (all by default)."""
    with enc.prepared(), rules.applied([enc.model, enc.head], rule):
        tokens = enc.tokenize(text)
        x = enc.hidden(tokens, layer)
        f = modified_function(enc, tokens, layer, sim)
        dims = range(f(x).shape[-1]) if dims is None else dims
        G = torch.zeros(len(dims), tokens.length, dtype=torch.float64)
        for i, k in enumerate(dims):
            xx = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(xx)[0, k], xx)
            G[i] = (g * x).sum(-1)[0].double()
    return G


def engine_G(enc, text, layer, sim, rule, mode, batch_size=None):
    with enc.prepared(), rules.applied([enc.model, enc.head], rule):
        side = prepare_side(enc, text, layer, "token", sim, False)
        f = modified_function(enc, side.tokens, layer, sim)
        D = side.fx.shape[-1]
        shape = engine.Shape.of(enc, side.tokens.length, side.x.shape[-1], D, side.x.dtype)
        p = engine.plan(len(side.units), 1, shape, mode=mode, batch_size=batch_size)
        assert p.mode == mode
        return relevance(f, side.x, side.units, D, p).double()


# ---------------------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
def test_engine_modes_agree_with_per_dimension_loop_minilm(explainer, rule):
    enc = explainer.encoder_a
    dims = list(range(0, 384, 32))  # 12 of the 384 dimensions: the loop is the slow reference
    G_loop = brute_force_G(enc, A, 0, "cosine", rule, dims)
    assert float(G_loop.abs().max()) > 1e-3  # not trivially zero
    Gs = {}
    for mode in ("forward", "reverse"):
        Gs[mode] = engine_G(enc, A, 0, "cosine", rule, mode, batch_size=5 if mode == "forward" else None)
        np.testing.assert_allclose(Gs[mode][dims].numpy(), G_loop.numpy(), atol=1e-5)
    np.testing.assert_allclose(Gs["forward"].numpy(), Gs["reverse"].numpy(), atol=1e-5)
    # the explanation is G_a^T G_b of those G's
    Gb = engine_G(enc, B, 0, "cosine", rule, "forward")
    e = explainer.explain(A, B, method="bilrp", sim="cosine", rule=rule, mode="forward")
    assert e.settings["mode"] == ["forward", "forward"]
    np.testing.assert_allclose(e.matrix, (Gs["forward"].T @ Gb).numpy(), atol=1e-5)
    # the rules matter: plain gradient x input differs
    with enc.prepared():
        tokens = enc.tokenize(A)
        x = enc.hidden(tokens, 0)
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(modified_function(enc, tokens, 0, "cosine")(xx)[0, dims[1]], xx)
    assert float(((g * x).sum(-1)[0].double() - G_loop[1]).abs().max()) > 1e-3


@pytest.mark.parametrize("rule", ["cp"])  # AttnLRP: rows on MiniLM above
def test_whole_matrix_matches_per_dimension_loop_tiny_model(tokenizer, rule):
    enc = simattr.Encoder(tiny_model("bert"), tokenizer, pooling="mean")
    A_loop = (brute_force_G(enc, A, 1, "dot", rule).T @ brute_force_G(enc, B, 1, "dot", rule)).numpy()
    for mode in ("forward", "reverse"):
        e = simattr.Explainer(enc).explain(A, B, method="bilrp", sim="dot", rule=rule, mode=mode, layer=1)
        np.testing.assert_allclose(e.matrix, A_loop, rtol=1e-9, atol=1e-12)


def test_forward_mode_relevance_matches_loop_at_a_higher_layer(explainer):
    enc = explainer.encoder_a
    dims = list(range(5, 384, 48))
    G_loop = brute_force_G(enc, B, 3, "dot", "cp", dims)
    G = engine_G(enc, B, 3, "dot", "cp", "forward", batch_size=2)  # chunked tangents
    np.testing.assert_allclose(G[dims].numpy(), G_loop.numpy(), atol=1e-5)


def test_result_fields_and_cosine_is_rescaled_dot(explainer):
    d = explainer.explain(A, B, method="bilrp", sim="dot")
    c = explainer.explain(A, B, method="bilrp", sim="cosine")
    assert d.method == c.method == "bilrp"
    assert d.extras["sim"] == "dot" and c.extras["sim"] == "cosine" and d.extras["rule"] == "cp"
    fa = explainer.encoder_a
    with fa.prepared():
        ea = fa.function(fa.tokenize(A), 0, False)(fa.hidden(fa.tokenize(A), 0))[0].double()
        eb = fa.function(fa.tokenize(B), 0, False)(fa.hidden(fa.tokenize(B), 0))[0].double()
    assert d.score == pytest.approx(float(ea @ eb), rel=1e-6)
    assert c.score == pytest.approx(float(ea @ eb / ea.norm() / eb.norm()), rel=1e-6)
    assert d.terms["decomposed"] == pytest.approx(d.score, rel=1e-5)
    assert d.error == pytest.approx(abs(d.total - d.terms["decomposed"]))
    assert d.extras["conservation"] == pytest.approx(d.total / d.terms["decomposed"])
    np.testing.assert_allclose(c.matrix, d.matrix / float(ea.norm() * eb.norm()), atol=1e-6)
    # with biases, the relevance is not conserved (the biases absorb a share): reported, not hidden
    assert abs(d.extras["conservation"] - 1) > 1e-2
    words = explainer.explain("unbelievably good", B, method="bilrp", units="word")
    assert words.matrix.shape[0] < len(explainer.encoder_a.tokenize("unbelievably good").tokens)


# ---------------------------------------------------------------------------------------------- conservation
def test_conservation_without_biases_minilm(explainer):
    enc = copy.deepcopy(explainer.encoder_a)
    assert zero_biases(enc.model) > 20
    for mode in ("auto", "forward"):  # auto: cross mode (the sides differ in length), one side's G only
        e = simattr.Explainer(enc).explain(A, B, method="bilrp", sim="dot", mode=mode)
        assert e.error <= 1e-4
        assert e.extras["conservation"] == pytest.approx(1.0, abs=1e-5)
        residual = [r for r in e.extras["residual_per_side"] if r is not None]
        assert len(residual) == (1 if mode == "auto" else 2) and max(residual) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_conservation_without_biases_every_family(tokenizer, family):
    model = tiny_model(family)
    zero_biases(model)
    enc = simattr.Encoder(model, tokenizer, pooling="mean", name=f"tiny-{family}")
    text_a = "a man is playing a large guitar on the stage tonight"  # longer than ModernBERT's window
    for mode in ("forward", "reverse"):
        e = simattr.Explainer(enc).explain(text_a, B, method="bilrp", sim="dot", mode=mode)
        assert e.error <= 1e-8 * max(1.0, abs(e.terms["decomposed"])), (family, mode, e.error)
        assert abs(e.terms["decomposed"]) > 1e-3
        assert e.terms["decomposed"] == pytest.approx(e.score, rel=1e-9)
    # a higher layer too
    e = simattr.Explainer(enc).explain(text_a, B, method="bilrp", sim="dot", layer=1)
    assert e.error <= 1e-8 * max(1.0, abs(e.terms["decomposed"]))


@pytest.mark.parametrize("family", ["mpnet", "modernbert", "distilbert"])
def test_every_family_reaches_the_rules(tokenizer, family):
    """With biases the rules are not conservative, and each rule must really be installed: count hooks."""
    model = tiny_model(family)
    kinds = {type(r).__name__ for _, r in rules.assign(model, "cp")}
    assert "NormRule" in kinds
    assert ("GatedMLPRule" if family == "modernbert" else "ActivationRule") in kinds
    if family == "mpnet":
        assert "InlineAttentionRule" in kinds
    enc = simattr.Encoder(model, tokenizer, pooling="mean")
    with enc.prepared(), rules.applied([model], "cp") as state:
        tokens = enc.tokenize(A)
        x = enc.hidden(tokens, 0)  # stops at the embedding output: no block runs
        assert state.counter.attention == 0
        enc.function(tokens, 0, False)(x)
        assert state.counter.attention >= 2  # function() ran both blocks through the rule


# ---------------------------------------------------------------------------------------------- side effects
def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", ["bert", "mpnet", "modernbert"])
def test_model_untouched_after_explanation(tokenizer, family):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = tiny_model(family, dtype=torch.float32)
    model.train()  # the user's state, restored afterwards
    enc = simattr.Encoder(model, tokenizer, pooling="mean")
    ids = tokenizer(A, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        before = model(**ids).last_hidden_state.clone()
    model.train()
    registry = (set(ALL_ATTENTION_FUNCTIONS.keys()), set(ALL_MASK_ATTENTION_FUNCTIONS.keys()))
    grads = [p.requires_grad for p in model.parameters()]
    for rule in ("cp", "attnlrp"):
        simattr.Explainer(enc).explain(A, B, method="bilrp", rule=rule)
    assert model.training and [p.requires_grad for p in model.parameters()] == grads
    assert _hooks(model) == 0
    assert model.config._attn_implementation == "eager"
    assert all(getattr(m, "config", model.config)._attn_implementation == "eager" for m in model.modules()
               if hasattr(getattr(m, "config", None), "_attn_implementation"))
    assert (set(ALL_ATTENTION_FUNCTIONS.keys()), set(ALL_MASK_ATTENTION_FUNCTIONS.keys())) == registry
    model.eval()
    with torch.no_grad():
        after = model(**ids).last_hidden_state
    assert torch.equal(before, after)


def test_hooks_removed_when_the_computation_fails(explainer):
    model = explainer.encoder_a.model
    with pytest.raises(RuntimeError):
        with rules.applied([model], "cp"):
            assert _hooks(model) > 0 and model.config._attn_implementation.startswith("simattr_bilrp")
            raise RuntimeError("boom")
    assert _hooks(model) == 0 and model.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------------------------- bad inputs, CLI
@pytest.mark.parametrize("kwargs", [dict(layer=6), dict(layer=-1), dict(layer="0"), dict(sim="l2"),
                                    dict(rule="epsilon"), dict(mode="sideways"), dict(steps=10),
                                    dict(reference="zero"), dict(max_memory="lots")])
def test_bad_options_raise(explainer, kwargs):
    with pytest.raises(simattr.SimattrError):
        explainer.explain(A, B, method="bilrp", **kwargs)


def test_bad_texts_raise(explainer):
    for a, b in (("", B), (A, "   "), (None, B)):
        with pytest.raises(simattr.SimattrError):
            explainer.explain(a, b, method="bilrp")
    with pytest.raises(simattr.SimattrError):
        explainer.explain("word " * 600, B, method="bilrp")


def test_callable_encoder_is_refused(tokenizer):
    enc = simattr.CallableEncoder(tokenizer, lambda ids, m: torch.randn(1, ids.shape[1], 8),
                                  lambda x, m: x.mean(1))
    with pytest.raises(simattr.SimattrError):
        simattr.Explainer(enc).explain(A, B, method="bilrp")


def test_cli(capsys):
    import json
    # an option that does not apply to BiLRP, given explicitly, is an error (not silently ignored)
    assert cli_main(["explain", A, B, "--method", "bilrp", "--steps", "20"]) == 2
    assert "does not take" in capsys.readouterr().err
    assert cli_main(["explain", A, B, "--method", "ij", "--rule", "attnlrp"]) == 2
    assert cli_main(["explain", A, B, "--method", "bilrp", "--sim", "dot", "--rule", "attnlrp", "--layer", "2",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "bilrp" and out["sim"] == "dot" and out["rule"] == "attnlrp"
    assert out["settings"]["layer"] == 2
    assert abs(out["total"] - out["terms"]["decomposed"]) == pytest.approx(out["error"])
