"""BiLRP: engine (forward/reverse) vs a per-dimension modified-backward loop, conservation without biases on
every supported family, the user's model untouched afterwards, bad inputs."""
import contextlib
import copy
import os
import warnings

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


def random_biases(model, seed=0, scale=0.1):
    """Non-zero biases (and LayerNorm betas): random-initialised transformers models start with zero ones."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data.copy_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
            n += 1
    return n


def brute_force_G(enc, text, layer, sim, rule, dims=None, bias="absorb"):
    """The authors' way: one full forward and one modified backward (autograd.grad) per embedding dimension k,
    gradient x input summed over the hidden features. Rows `dims` only (all by default)."""
    with enc.prepared(), rules.applied([enc.model, enc.head], rule, bias=bias):
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


def engine_G(enc, text, layer, sim, rule, mode, batch_size=None, bias="absorb"):
    with enc.prepared(), rules.applied([enc.model, enc.head], rule, bias=bias):
        side = prepare_side(enc, text, layer, "token", sim, False)
        f = modified_function(enc, side.tokens, layer, sim)
        D = side.fx.shape[-1]
        shape = engine.Shape.of(enc, side.tokens.length, side.x.shape[-1], D, side.x.dtype)
        p = engine.plan(len(side.units), 1, shape, mode=mode, batch_size=batch_size)
        assert p.mode == mode
        return relevance(f, side.x, side.units, D, p).double()


# ---------------------------------------------------------------------------------------------- correctness
@pytest.mark.filterwarnings("ignore:BiLRP .*conservation:UserWarning")  # the authors' setting, bias="absorb"
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
    e = explainer.explain(A, B, method="bilrp", sim="cosine", rule=rule, mode="forward", bias="absorb")
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
        e = simattr.Explainer(enc).explain(A, B, method="bilrp", sim="dot", rule=rule, mode=mode, layer=1,
                                           bias="absorb")
        np.testing.assert_allclose(e.matrix, A_loop, rtol=1e-9, atol=1e-12)


def test_forward_mode_relevance_matches_loop_at_a_higher_layer(explainer):
    enc = explainer.encoder_a
    dims = list(range(5, 384, 48))
    G_loop = brute_force_G(enc, B, 3, "dot", "cp", dims)
    G = engine_G(enc, B, 3, "dot", "cp", "forward", batch_size=2)  # chunked tangents
    np.testing.assert_allclose(G[dims].numpy(), G_loop.numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:BiLRP .*conservation:UserWarning")
def test_result_fields_and_cosine_is_rescaled_dot(explainer):
    d = explainer.explain(A, B, method="bilrp", sim="dot", bias="absorb")
    c = explainer.explain(A, B, method="bilrp", sim="cosine", bias="absorb")
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
        e = simattr.Explainer(enc).explain(A, B, method="bilrp", sim="dot", mode=mode, bias="absorb")
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
        e = simattr.Explainer(enc).explain(text_a, B, method="bilrp", sim="dot", mode=mode, bias="absorb")
        assert e.error <= 1e-8 * max(1.0, abs(e.terms["decomposed"])), (family, mode, e.error)
        assert abs(e.terms["decomposed"]) > 1e-3
        assert e.terms["decomposed"] == pytest.approx(e.score, rel=1e-9)
    # a higher layer too
    e = simattr.Explainer(enc).explain(text_a, B, method="bilrp", sim="dot", layer=1, bias="absorb")
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


# ---------------------------------------------------------------------------------------------- bias settings
def hand_relevance(contrib, z, b, c, how, eps):
    """LRP relevance of the inputs of one affine map z_j = Σ_i contrib[j, i] + b_j, written as the LRP rules
    state it (relevance R_j = z_j c_j at the output, c the upstream gradient), loops in plain Python floats."""
    J, I = len(contrib), len(contrib[0])
    sign = lambda t: 1.0 if t >= 0 else -1.0
    R = [0.0] * I
    for j in range(J):
        Rj = z[j] * c[j]
        d = z[j] - b[j]
        total_abs = sum(abs(contrib[j][k]) for k in range(I))
        for i in range(I):
            if how == "absorb":
                R[i] += contrib[j][i] / z[j] * Rj
            elif how == "epsilon":
                R[i] += contrib[j][i] / (z[j] + eps * sign(z[j])) * Rj
            elif how == "redistribute":
                R[i] += contrib[j][i] / (d + eps * sign(d)) * Rj
            else:  # redistribute-abs: the bias share in proportion to |contribution|
                R[i] += (contrib[j][i] + b[j] * abs(contrib[j][i]) / total_abs) / z[j] * Rj
    return R


def _eps(how):
    return {"epsilon": rules.EPSILON, "redistribute": rules.REDISTRIBUTE_EPS}.get(how, 0.0)


#: what each bias setting does to a linear layer and to a LayerNorm, in `hand_relevance`'s terms
LINEAR_HOW = {"absorb": "absorb", "epsilon": "epsilon", "epsilon-ln": "epsilon", "redistribute": "redistribute",
              "redistribute-abs": "redistribute-abs"}
NORM_HOW = {"absorb": "absorb", "epsilon": "absorb", "epsilon-ln": "redistribute-abs", "redistribute": "redistribute",
            "redistribute-abs": "redistribute-abs"}


def _both_modes(fn, x, c):
    """x ⊙ J̃ᵀc of fn at x, by autograd (reverse) and by JVPs with one-hot tangents under vmap (forward)."""
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((fn(xx) * c).sum(), xx)
    basis = torch.eye(x.numel(), dtype=x.dtype).view(-1, *x.shape)
    jt = torch.vmap(lambda t: torch.func.jvp(fn, (x,), (t,))[1])(basis)  # [x.numel(), *out]
    fwd = (jt * c).flatten(1).sum(1).view(x.shape)
    return x * g, x * fwd


@pytest.mark.parametrize("how", rules.BIASES)
def test_linear_rule_against_hand_written_lrp(how):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g)
    W = torch.randn(4, 5, dtype=torch.float64, generator=g)
    b = torch.randn(4, dtype=torch.float64, generator=g)
    c = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)
    plain = torch.nn.functional.linear(x, W, b)
    assert torch.equal(rules.linear_rule(x, W, b, how), plain)  # the value, bit for bit
    rev, fwd = _both_modes(lambda t: rules.linear_rule(t, W, b, how), x, c)
    np.testing.assert_allclose(fwd.numpy(), rev.numpy(), rtol=1e-12, atol=1e-12)
    for n in range(2):
        for s in range(3):
            xs = x[n, s].tolist()
            contrib = [[W[j, i].item() * xs[i] for i in range(5)] for j in range(4)]
            hand = LINEAR_HOW[how]
            want = hand_relevance(contrib, plain[n, s].tolist(), b.tolist(), c[n, s].tolist(), hand, _eps(hand))
            np.testing.assert_allclose(rev[n, s].numpy(), want, rtol=1e-10, atol=1e-12)
    total_out = float((plain * c).sum())
    if how == "redistribute-abs":  # conservative: the relevance of the output reaches the inputs whole
        assert float(rev.sum()) == pytest.approx(total_out, rel=1e-12)
    else:
        assert abs(float(rev.sum()) - total_out) > 1e-3  # the bias (or ε, or δ) keeps a share


@pytest.mark.parametrize("how", rules.BIASES)
def test_layer_norm_rule_against_hand_written_lrp(how):
    g = torch.Generator().manual_seed(2)
    n = 6
    x = torch.randn(3, n, dtype=torch.float64, generator=g) * 2 + 0.5
    w = torch.randn(n, dtype=torch.float64, generator=g)
    beta = torch.randn(n, dtype=torch.float64, generator=g)
    c = torch.randn(3, n, dtype=torch.float64, generator=g)
    ln = torch.nn.functional.layer_norm(x, (n,), w, beta, 1e-5)
    y = rules.norm_rule(x, (n,), w, beta, 1e-5, how)
    np.testing.assert_allclose(y.numpy(), ln.numpy(), rtol=0, atol=1e-12)
    rev, fwd = _both_modes(lambda t: rules.norm_rule(t, (n,), w, beta, 1e-5, how), x, c)
    np.testing.assert_allclose(fwd.numpy(), rev.numpy(), rtol=1e-12, atol=1e-12)
    for s in range(3):
        # the LayerNorm with its std held constant is the affine map diag(w/σ)(I − 11ᵀ/n) x + β
        sigma = float(((x[s] - x[s].mean()) ** 2).mean().add(1e-5).sqrt())
        M = torch.diag(w / sigma) @ (torch.eye(n, dtype=torch.float64) - 1.0 / n)
        contrib = (M * x[s]).tolist()
        # the ε-rule is for linear layers: a LayerNorm keeps β a constant under "epsilon", hands it back under
        # "epsilon-ln"
        hand = NORM_HOW[how]
        want = hand_relevance(contrib, ln[s].tolist(), beta.tolist(), c[s].tolist(), hand, _eps(hand))
        np.testing.assert_allclose(rev[s].numpy(), want, rtol=1e-9, atol=1e-10)
    if NORM_HOW[how] == "redistribute-abs":
        assert float(rev.sum()) == pytest.approx(float((ln * c).sum()), rel=1e-12)


@contextlib.contextmanager
def no_user_warning():
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        yield
    bad = [str(w.message) for w in records if issubclass(w.category, UserWarning) and "BiLRP" in str(w.message)]
    assert not bad, bad


def _biased_encoder(tokenizer, family, seed=0):
    model = tiny_model(family, seed=seed)
    assert random_biases(model, seed) > 5
    return simattr.Encoder(model, tokenizer, pooling="mean", name=f"tiny-{family}-biased")


@pytest.mark.filterwarnings("ignore:BiLRP .*conservation:UserWarning")
@pytest.mark.parametrize("family", ["bert", "mpnet", "distilbert"])
def test_bias_settings_keep_the_value_and_the_modes_agree(tokenizer, family):
    """Every bias setting: the modified network gives the model's embedding; forward mode, reverse mode and the
    per-dimension autograd loop give the same G; only redistribute-abs conserves with (random, non-zero) biases."""
    enc = _biased_encoder(tokenizer, family)
    dims = list(range(0, 64, 9))
    cons = {}
    for how in rules.BIASES:
        with enc.prepared():
            tokens = enc.tokenize(A)
            x = enc.hidden(tokens, 0)
            with torch.no_grad():
                plain = modified_function(enc, tokens, 0, "dot")(x)
                with rules.applied([enc.model], "cp", bias=how) as state:
                    modified = modified_function(enc, tokens, 0, "dot")(x)
        linear = sum(type(r).__name__ == "LinearRule" for _, r in state.pairs)
        assert linear == (0 if how == "absorb" else sum(isinstance(m, torch.nn.Linear) for m in enc.model.modules()))
        np.testing.assert_allclose(modified.numpy(), plain.numpy(), rtol=0, atol=1e-12)
        G_loop = brute_force_G(enc, A, 0, "dot", "cp", dims, bias=how)
        Gf = engine_G(enc, A, 0, "dot", "cp", "forward", bias=how)
        Gr = engine_G(enc, A, 0, "dot", "cp", "reverse", bias=how)
        np.testing.assert_allclose(Gf.numpy(), Gr.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(Gf[dims].numpy(), G_loop.numpy(), rtol=1e-9, atol=1e-12)
        e = simattr.Explainer(enc).explain(A, B, method="bilrp", sim="dot", bias=how, mode="forward")
        assert e.settings["bias"] == e.extras["bias"] == how
        cons[how] = e.extras["conservation"]
        assert e.extras["bias_share"] == pytest.approx(1 - cons[how])
        assert e.extras["bias_term"] == pytest.approx(e.terms["decomposed"] - e.total)
    assert cons["redistribute-abs"] == pytest.approx(1.0, abs=1e-9)
    assert all(abs(cons[how] - 1) > 1e-3 for how in cons if how != "redistribute-abs")  # the biases matter


@pytest.mark.parametrize("family", FAMILIES)
def test_redistribute_abs_conserves_with_biases_every_family(tokenizer, family):
    enc = _biased_encoder(tokenizer, family) if family != "modernbert" else None
    if enc is None:  # ModernBERT has no biases by default: its config can have them
        import transformers as tf
        torch.manual_seed(0)
        cfg = tf.ModernBertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  global_attn_every_n_layers=2, local_attention=8, vocab_size=30522, pad_token_id=0,
                                  bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
                                  attention_bias=True, mlp_bias=True, norm_bias=True)
        model = tf.AutoModel.from_config(cfg, attn_implementation="eager").double().eval()
        assert random_biases(model) > 5
        enc = simattr.Encoder(model, tokenizer, pooling="mean")
    text_a = "a man is playing a large guitar on the stage tonight"
    ex = simattr.Explainer(enc)
    for layer in (0, 1):
        with no_user_warning():
            e = ex.explain(text_a, B, method="bilrp", sim="dot", bias="redistribute-abs", layer=layer)
        assert e.extras["conservation"] == pytest.approx(1.0, abs=1e-9), (family, layer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        absorbed = ex.explain(text_a, B, method="bilrp", sim="dot", bias="absorb")
    assert abs(absorbed.extras["conservation"] - 1) > 1e-4


def test_conservation_warning_and_bias_share_minilm(explainer):
    from simattr.methods import bilrp
    a, b = "She is reading a book about ancient Rome.", "A dog is chasing a red ball."  # score near 0
    with pytest.warns(UserWarning, match=r"conservation .*bias=") as record:
        e = explainer.explain(a, b, method="bilrp", sim="dot", bias="absorb")
    assert abs(e.extras["conservation"] - 1) > bilrp.CONSERVATION_TOLERANCE
    ours = [str(w.message) for w in record if issubclass(w.category, UserWarning) and "BiLRP" in str(w.message)]
    assert len(ours) == 1 and f"{e.extras['conservation']:.4g}" in ours[0]
    assert e.settings["bias"] == "absorb"
    assert e.extras["bias_term"] == pytest.approx(e.terms["decomposed"] - e.total)
    with no_user_warning():
        r = explainer.explain(a, b, method="bilrp", sim="dot", bias="redistribute-abs")
    assert r.extras["conservation"] == pytest.approx(1.0, abs=1e-3)
    assert abs(r.extras["bias_share"]) < 1e-3
    with pytest.raises(simattr.SimattrError, match=r"bias=.*absorb.*redistribute-abs"):
        explainer.explain(a, b, method="bilrp", bias="zero")


@pytest.mark.filterwarnings("ignore:BiLRP .*conservation:UserWarning")  # ε = 0.2 absorbs much
def test_cached_g_is_keyed_by_the_bias_setting(explainer, monkeypatch):
    """A kept G (Explainer(cache_size=...)) is never served to another bias setting or another ε."""
    ex = simattr.Explainer(explainer.encoder_a, cache_size=8)
    plain = ex.explain(A, B, method="bilrp", sim="dot", bias="redistribute-abs")
    default = ex.explain(A, B, method="bilrp", sim="dot")
    assert default.settings["bias"] == "epsilon-ln"
    assert np.abs(default.matrix - plain.matrix).max() > 1e-3
    monkeypatch.setattr(rules, "EPSILON", 0.2)
    wider = ex.explain(A, B, method="bilrp", sim="dot")
    assert np.abs(wider.matrix - default.matrix).max() > 1e-3
    fresh = simattr.Explainer(explainer.encoder_a).explain(A, B, method="bilrp", sim="dot")
    np.testing.assert_allclose(wider.matrix, fresh.matrix, rtol=1e-6, atol=1e-7)


@pytest.mark.mpnet
def test_mpnet_default_bias_setting_conserves_better_than_cp(mpnet):
    """The issue's pair on the real all-mpnet-base-v2: Σ A = 227.6 f(a)·f(b) under the authors' CP-LRP (biases
    absorbed); the default bias setting brings it within the warning threshold."""
    from simattr.methods import bilrp
    a, b = "A man is playing a guitar.", "Someone plays an instrument."
    with pytest.warns(UserWarning, match="conservation"):
        cp = mpnet.explain(a, b, method="bilrp", sim="dot", bias="absorb")
    assert cp.extras["conservation"] == pytest.approx(227.55, rel=1e-2)
    with no_user_warning():
        d = mpnet.explain(a, b, method="bilrp", sim="dot")
    assert d.settings["bias"] == bilrp.DEFAULT_BIAS != "absorb"
    assert abs(d.extras["conservation"] - 1) <= bilrp.CONSERVATION_TOLERANCE
    assert abs(d.extras["conservation"] - 1) < abs(cp.extras["conservation"] - 1) / 100
    assert d.score == pytest.approx(cp.score)


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


@pytest.mark.parametrize("bias", ["absorb", "epsilon-ln"])
def test_hooks_removed_when_the_computation_fails(explainer, bias):
    model = explainer.encoder_a.model
    with pytest.raises(RuntimeError):
        with rules.applied([model], "cp", bias=bias):
            assert _hooks(model) > 0 and model.config._attn_implementation.startswith("simattr_bilrp")
            raise RuntimeError("boom")
    assert _hooks(model) == 0 and model.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------------------------- bad inputs, CLI
@pytest.mark.parametrize("kwargs", [dict(layer=6), dict(layer=-1), dict(layer="0"), dict(sim="l2"),
                                    dict(rule="epsilon"), dict(mode="sideways"), dict(steps=10),
                                    dict(bias="zero"), dict(bias=None), dict(bias=0.1), dict(bias="Absorb"),
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


def test_conservation_warning_reads_near_zero_similarities_on_their_scale():
    """A ratio Σ A / s means nothing where s ≈ 0: the warning compares |Σ A − s| with max(|s|, 0.1 ‖f̃a‖ ‖f̃b‖)."""
    import warnings
    from simattr.methods.bilrp import warn_conservation
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warn_conservation(3.0, 0.03, "epsilon-ln", decomposed=0.01, scale=1.0)  # cosine 0.01, Σ A 0.03: fine
        warn_conservation(1.2, 0.6, "epsilon-ln", decomposed=0.5, scale=1.0)
    with pytest.warns(UserWarning, match="conservation"):
        warn_conservation(3.0, 1.5, "epsilon-ln", decomposed=0.5, scale=1.0)
    with pytest.warns(UserWarning, match="conservation"):
        warn_conservation(-4.0, 0.4, "epsilon-ln", decomposed=-0.1, scale=1.0)  # |0.5| > 0.5 · 0.1
