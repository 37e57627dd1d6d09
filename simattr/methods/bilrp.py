"""BiLRP (Eberle et al., TPAMI 2020; Vasileiou & Eberle, NAACL 2024) on the IJ engine.

R_k(x) = x ⊙ ∇̃f_k(x)  (LRP relevance of embedding dimension k at the input of block `layer`, by the modified
gradient of `simattr.rules`), summed over hidden features per unit:  G[k, u] = Σ_{s∈u,h} x_sh ∇̃f_k(x)_sh,
A = G_aᵀ G_b = Σ_k R_k(a) R_k(b)ᵀ.

The engine computes G with one "step" (`start=x, delta=0, α=0, w=1, tangent=x`): forward mode is one JVP of
the modified network per unit, reverse mode one VJP per output dimension. Both give the modified Jacobian at
x exactly (detach() acts the same in both AD modes), for CP-LRP and AttnLRP alike.

sim="dot" is the authors' setting. sim="cosine" folds the normalisation into f with the norm held constant,
f̃(x) / ‖f(x)‖.detach(), so the cosine matrix is the dot matrix divided by ‖f(a)‖‖f(b)‖.
Conservation: with CP-LRP the modified network is linear up to its biases, so Σ A = f(a)·f(b) exactly when the
biases are zero; with biases a share of the relevance is absorbed by them (`conservation` = Σ A / f(a)·f(b);
all-mpnet-base-v2, "A man is playing a guitar." / "Someone plays an instrument.": 227.6 — the biases take relevance
of the opposite sign and nearly everything cancels). The `bias` option (`simattr.rules.BIASES`) says what the biases
of linear layers and LayerNorms do: "absorb" (the authors' CP-LRP / AttnLRP), "epsilon" (ε-rule on linear layers),
"epsilon-ln" (the default: ε-rule on linear layers, LayerNorm β handed back to the inputs; that pair: 0.939),
"redistribute" (signed shares, unstable) and "redistribute-abs" (|contribution| shares, exactly conservative).
Every result reports `conservation`, `bias_term` = f̃(a)·f̃(b) − Σ A (the part of the similarity A does not carry)
and `bias_share` = bias_term / f̃(a)·f̃(b) = 1 − conservation, and warns (UserWarning) when
|conservation − 1| > CONSERVATION_TOLERANCE.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import engine, jobs, rules
from ..encoders import CallableEncoder, Encoder, Tokens, prepared, prompt_extras
from ..errors import SimattrError, check_finite, warn
from ..explanation import Explanation
from ..options import Option, Options, one_of
from .common_options import path_options
from .path import Path, PathJob
from ..units import Units, make_units

#: the bias setting BiLRP runs with unless told (`simattr.rules.BIASES`), chosen by benchmarks/bench_bilrp_rules.py
#: (8 pairs, rule cp, occlusion by `simattr.evaluate.faithfulness`): "epsilon-ln" (ε = 0.03) beats the authors'
#: "absorb" on all-mpnet-base-v2 at layers 0 and 4 in conservation (median |Σ A / f̃(a)·f̃(b) − 1| 0.26 and 0.17
#: against 880 and 21) and in agreement with occlusion (pairs r 0.545 / 0.602 against 0.443 / 0.515, Spearman
#: 0.290 / 0.289 against 0.227 / 0.241, units r 0.649 / 0.598 against 0.512 / 0.524) while keeping most pairs of both
#: models within CONSERVATION_TOLERANCE (MiniLM 7/8, MPNet 6/8 and 7/8); no ε-rule alone does (an ε that conserves on
#: one model does not on the other). bias="absorb" is the authors' rule set exactly; bias="redistribute-abs"
#: conserves exactly but agrees less with occlusion on MPNet at layer 0 (pairs r 0.354, Spearman 0.043)
DEFAULT_BIAS = "epsilon-ln"
#: the setting that conserves Σ A = f̃(a)·f̃(b) with biases (named by the conservation warning)
CONSERVATIVE_BIAS = "redistribute-abs"
#: a result whose |conservation − 1| exceeds this warns (UserWarning): its Σ A then differs from the similarity it
#: explains by more than half of it (MPNet, bias="absorb": conservation 227.6 on "A man is playing a guitar." /
#: "Someone plays an instrument.")
CONSERVATION_TOLERANCE = 0.5
#: below this share of ‖f̃(a)‖ ‖f̃(b)‖ (a cosine of 0.1) a similarity counts as near 0: the warning then compares
#: |Σ A − f̃(a)·f̃(b)| with that floor instead of the ratio
NEAR_ZERO = 0.1


@dataclass
class Side:
    encoder: Encoder
    tokens: Tokens
    x: Tensor  # [1, S, H] at the input of block `layer`
    units: Units
    fx: Tensor  # the model's embedding (no rules), normalised for cosine
    f: Optional[Callable] = None  # the modified network f̃ (set by the job)
    fmod: Optional[Tensor] = None  # f̃(x): equal to fx up to rounding (checked)
    shape: Optional[engine.Shape] = None


def check_encoder(encoder: Encoder):
    if isinstance(encoder, CallableEncoder) or encoder.model is None:
        raise SimattrError("BiLRP applies its rules to the modules of a transformers model; a CallableEncoder "
                           "has none (use method='ij')")


def prepare_side(encoder: Encoder, text: str, layer: int, units, sim: str, truncate: bool) -> Side:
    tokens = encoder.tokenize(text, truncate=truncate)
    encoder.check_layer(layer)
    x = encoder.hidden(tokens, layer)
    with torch.no_grad():
        fx = encoder.function(tokens, layer, normalize=sim == "cosine")(x)[0]
    check_finite(fx, "the model's embedding of the input")
    return Side(encoder, tokens, x, make_units(tokens, units), fx)


def choose_attention(encoder: Encoder, attention: str, rule: str) -> str:
    """"fused" (the cp rule through the fused attention kernel's constant-softmax mode) or "eager".

    auto / fused / eager as in `simattr.attention.choose` (MPNet keeps its inline attention rule); attnlrp is always
    eager (its softmax and product rules are not in the kernel)."""
    from .. import attention as fused
    if attention == "fused" and rule != "cp":
        raise SimattrError("the fused attention kernel implements the cp rule (constant softmax) only; use "
                           "attention='eager' with rule='attnlrp'")
    return fused.choose(encoder, attention) if rule == "cp" else "eager"


def modified_function(encoder: Encoder, tokens: Tokens, layer: int, sim: str) -> Callable[[Tensor], Tensor]:
    """f̃: x -> embedding under the rules active around the call; for cosine, divided by the detached norm."""
    f = encoder.function(tokens, layer, normalize=False, own_norm=False)
    if not getattr(encoder, "multi_vector", False):
        return held_norm(encoder, f, sim)
    if not encoder.normalizes:
        return f
    k = len(tokens.scoring)

    def f_tokens(x: Tensor) -> Tensor:  # each token vector over its own norm, held constant
        e = f(x)
        v = e.reshape(e.shape[0], k, -1)
        return (v / v.norm(dim=-1, keepdim=True).detach().clamp_min(1e-12)).flatten(1)
    return f_tokens


def held_norm(encoder: Encoder, f: Callable[[Tensor], Tensor], sim: str) -> Callable[[Tensor], Tensor]:
    """f̃ of a single-vector tower from its plain f: for cosine (or a model ending with its own Normalize), the
    embedding over its detached norm; f itself for a plain dot product."""
    if sim == "dot" and not encoder.normalized:
        return f
    if sim == "dot" and getattr(encoder, "truncate_dim", None):
        raise SimattrError("BiLRP of a dot product of truncated embeddings of a model that normalises them first "
                           "(Normalize, then truncate_dim) is not implemented: use sim='cosine' (equal up to the "
                           "scale) or method='ij'")
    # cosine, or a model ending with its own Normalize module: the norm is held constant, like LayerNorm's std

    def f_cos(x: Tensor) -> Tensor:
        e = f(x)
        return e / e.norm(dim=-1, keepdim=True).detach().clamp_min(1e-12)
    return f_cos


def check_value(modified: Tensor, plain: Tensor, tol: float = 1e-3):
    """The rules change derivatives only: the modified network must give the model's own embedding."""
    gap = float((modified.double() - plain.double()).norm() / plain.double().norm().clamp_min(1e-30))
    if not gap <= tol:
        raise SimattrError(f"the BiLRP rules changed the model's output (relative difference {gap:.2e}): a module "
                           f"of this architecture is not handled correctly")


def relevance(f: Callable, x: Tensor, units: Units, out_dim: int, p: engine.Plan) -> Tensor:
    """G [D, U]: gradient x input of f at x, summed over the hidden features of each unit."""
    return engine.path_attribution(f, x, torch.zeros_like(x), [0.0], [1.0], units.matrix, out_dim, p, tangent=x)


#: the options of method="bilrp" (simattr.options): API checks, command line, cache key and docs/options.md
OPTIONS = Options("bilrp", [
    Option("rule", "cp", "LRP rule set: 'cp' (CP-LRP: attention probabilities and LayerNorm scales constant) or "
           "'attnlrp' (AttnLRP)", one_of(*rules.RULES), in_key=True),
    Option("bias", DEFAULT_BIAS, "how biases share relevance: 'absorb' (the authors' CP-LRP), 'epsilon', "
           "'epsilon-ln', 'redistribute', 'redistribute-abs'", one_of(*rules.BIASES), in_key=True),
] + path_options())


class BiLRPJob(PathJob):
    """BiLRP for one job — one pair or many, one set of options — as the hooks of `simattr.jobs.run`.

    The rules are active only around the passes (and the check of each text's modified output): each text's
    `fx` is the plain model's embedding, computed without them."""

    table = OPTIONS

    def __init__(self, enc_a: Encoder, enc_b: Encoder, **options):
        super().__init__(enc_a, enc_b, options)
        o = self.options
        for enc in (enc_a, enc_b):
            check_encoder(enc)
        self.rule, self.bias = o.rule, o.bias
        self.attn = "fused" if all(choose_attention(e, o.attention, o.rule) == "fused" for e in self.encoders) \
            else "eager"
        same = enc_b is enc_a
        self.roots = [enc_a.model, enc_a.head] + ([] if same else [enc_b.model, enc_b.head])

    @contextlib.contextmanager
    def context(self):
        enc_a, enc_b = self.encoders
        with prepared(enc_a, enc_b):
            yield

    def rules_applied(self):
        return rules.applied(self.roots, self.rule, fused_attention=self.attn == "fused", bias=self.bias)

    around = rules_applied  # the passes run under the LRP rules

    def packed_function(self, sides: list):
        """F̃(x, rows) of several texts: the packed plain f under the same norm treatment as `modified_function`."""
        enc = sides[0].encoder
        F = enc.packed_function([s.tokens for s in sides], self.layer, normalize=False, own_norm=False)
        return lambda x, rows: held_norm(enc, lambda y: F(y, rows), self.sim)(x)

    def path(self, side: Side) -> Path:
        """One step at x: gradient x input of the modified network (the tangent is x itself)."""
        return Path(side.f, side.x, torch.zeros_like(side.x), [0.0], [1.0], tangent=side.x)

    def cache_key(self, tower: int):
        """By value (`jobs.GCache`): the model's weights fingerprint; NO_CACHE (not kept) for callable units."""
        enc = self.encoders[tower]
        return jobs.cache_key("bilrp", jobs.model_fingerprint(enc), str(enc.dtype), str(enc.device),
                              rules.bias_constants(self.bias), *OPTIONS.key(self.options, tower, jobs.option_key))

    def side(self, tower: int, text: str) -> Side:
        enc = self.encoders[tower]
        s = prepare_side(enc, text, self.layer, self.units[tower], self.sim, self.truncate)
        s.f = modified_function(enc, s.tokens, self.layer, self.sim)
        with self.rules_applied() as state:
            state.counter.reset()
            with torch.no_grad():
                s.fmod = s.f(s.x)[0]
            state.check_attention(enc.num_layers)
        return self._checked(enc, s)

    def _checked(self, enc: Encoder, s: Side) -> Side:
        D = self.embedding_size(s.fx)
        check_value(s.fmod, s.fx)
        s.shape = engine.Shape.of(enc, s.tokens.length, s.x.shape[-1], D, s.x.dtype)
        s.shape.fused_attention = self.attn == "fused"
        return s

    def sides_batch(self, tower: int, texts: list) -> Optional[list]:
        """Several texts of one tower prepared as the rows of one padded batch (`Encoder.packed_tokens`): their
        hidden states, plain and modified embeddings in three forward passes instead of three per text (what
        `side` computes, up to rounding); None when they do not share a packing key (the caller prepares each)."""
        enc = self.encoders[tower]
        if not self.pack:
            return None
        toks = [enc.tokenize(t, truncate=self.truncate) for t in texts]
        keys = {enc.pack_key(t) for t in toks}
        if len(keys) != 1 or None in keys:
            return None
        enc.check_layer(self.layer)
        X = enc.hidden(enc.packed_tokens(toks), self.layer)  # [R, S, H]
        rows = torch.arange(len(toks), device=X.device)
        with torch.no_grad():
            FX = enc.packed_function(toks, self.layer, normalize=self.sim == "cosine")(X, rows)
            plain = enc.packed_function(toks, self.layer, normalize=False, own_norm=False)
            with self.rules_applied() as state:
                state.counter.reset()
                FMOD = held_norm(enc, lambda y: plain(y, rows), self.sim)(X)
                state.check_attention(enc.num_layers)
        real = [X[k, :t.length] for k, t in enumerate(toks)]
        if not all(bool(torch.isfinite(v).all()) for v in [FX, FMOD] + real):
            return None  # a padded row went non-finite (`engine.forward_mode_packed`): each text alone says which
        out = []
        for k, tok in enumerate(toks):
            s = Side(enc, tok, X[k:k + 1, :tok.length].clone(), make_units(tok, self.units[tower]), FX[k])
            s.f, s.fmod = modified_function(enc, tok, self.layer, self.sim), FMOD[k]
            out.append(self._checked(enc, s))
        return out

    def item(self, side: Side) -> jobs.Item:
        return jobs.Item(len(side.units), side.tokens.length)

    def explanation(self, a: Side, b: Side, A: Tensor, G_a, G_b, plans: list, seconds: float,
                    first=(None, None)) -> Explanation:
        total = float(A.sum())
        form = self.form(a, b)
        decomposed = form.dot(a.fmod, b.fmod)
        score = form.dot(a.fx, b.fx)
        residual = [None if G is None else
                    float((G.sum(1).double() - s.fmod.double()).norm() / s.fmod.double().norm().clamp_min(1e-30))
                    for G, s in ((G_a, a), (G_b, b))]
        enc_a, enc_b = self.encoders
        settings = {"layer": self.layer, "sim": self.sim, "rule": self.rule,
                    "units": self.units_option if isinstance(self.units_option, str) else "spans",
                    "mode": [p["mode"] for p in plans], "model_a": enc_a.describe(),
                    "model_b": enc_b.describe() if enc_b is not enc_a else "same",
                    "dtype": str(a.x.dtype).replace("torch.", ""), "device": str(a.x.device), "attention": self.attn}
        conservation = total / decomposed if decomposed != 0 else None
        settings["bias"] = self.bias
        extras = {"conservation": conservation, "rule": self.rule, "bias": self.bias,
                  # the part of f̃(a)·f̃(b) that A does not carry (absorbed by the biases): absolute and as a share
                  "bias_term": decomposed - total,
                  "bias_share": 1 - conservation if conservation is not None else None,
                  "sim": self.sim, "residual_per_side": residual, "plans": plans, "seconds": seconds,
                  **({"late_interaction": form.as_dict()} if self.late else {}),
                  # the score in the terms of IJ's decomposition: no reference (baseline and first-order terms 0),
                  # the interactions, and what the biases hold (and the rules' rounding: score − f̃(a)·f̃(b))
                  "decomposition": {"score": score, "baseline": 0.0, "first_order_sum_a": 0.0,
                                    "first_order_sum_b": 0.0, "interactions": total, "bias": decomposed - total,
                                    "rounding": score - decomposed, "sum": score, "error": 0.0},
                  **prompt_extras(a.tokens, b.tokens, a.units.groups, b.units.groups)}
        scale = float(a.fmod.double().norm() * b.fmod.double().norm())
        warn_conservation(conservation, total, self.bias, decomposed, scale)
        extras.update(self.aspect_extras(a, b, G_a, G_b, score))
        return Explanation(method="bilrp", matrix=A.cpu().numpy(), tokens_a=a.units.labels,
                           tokens_b=b.units.labels, score=score, terms={"decomposed": decomposed},
                           error=abs(total - decomposed), settings=settings, extras=extras,
                           factors=self.factors(G_a, G_b))


def warn_conservation(conservation: Optional[float], total: float, bias: str, decomposed: float = None,
                      scale: float = 0.0):
    """UserWarning when Σ A is far from f̃(a)·f̃(b): |Σ A − f̃(a)·f̃(b)| > CONSERVATION_TOLERANCE ·
    max(|f̃(a)·f̃(b)|, NEAR_ZERO · ‖f̃(a)‖ ‖f̃(b)‖) — the conservation ratio itself where the similarity is not near 0
    (there a ratio means nothing: a cosine of 0.01 explained by Σ A = 0.03 is not a failure)."""
    if decomposed is not None:
        floor = max(abs(decomposed), NEAR_ZERO * scale)
        if abs(total - decomposed) <= CONSERVATION_TOLERANCE * floor:
            return
    if conservation is None:
        if total == 0:
            return
        what = f"f̃(a)·f̃(b) = 0 while Σ A = {total:.4g}"
    elif decomposed is None and abs(conservation - 1) <= CONSERVATION_TOLERANCE:
        return
    else:
        what = f"conservation Σ A / f̃(a)·f̃(b) = {conservation:.4g}"
    hint = (f"bias={CONSERVATIVE_BIAS!r} hands every bias share back to the inputs (exact conservation)"
            if bias != CONSERVATIVE_BIAS else "the similarity may be too close to 0 for the ratio to mean much")
    warn(f"BiLRP (bias={bias!r}): {what}, outside 1 ± {CONSERVATION_TOLERANCE}: the matrix does not "
         f"decompose the similarity (the biases absorb or add relevance); {hint} (option bias=, one of "
         f"{', '.join(rules.BIASES)})")


def explain_bilrp(enc_a: Encoder, enc_b: Encoder, text_a: str, text_b: str, **options) -> Explanation:
    """BiLRP of one pair; options: those of `BiLRPJob`."""
    return jobs.explain_one(BiLRPJob(enc_a, enc_b, **options), text_a, text_b)


explain_bilrp.job = BiLRPJob
