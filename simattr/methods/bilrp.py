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
biases are zero; with biases a share of the relevance is absorbed by them (`conservation` = Σ A / f(a)·f(b)).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .. import engine, rules
from ..contraction import check_backend as check_contraction
from ..encoders import CallableEncoder, Encoder, Tokens
from ..errors import SimattrError
from ..explanation import Explanation
from ..units import Units, make_units

SIMS = ("cosine", "dot")


@dataclass
class Side:
    encoder: Encoder
    tokens: Tokens
    x: Tensor  # [1, S, H] at the input of block `layer`
    units: Units
    fx: Tensor  # the model's embedding (no rules), normalised for cosine


def check_sim(sim: str) -> str:
    if sim not in SIMS:
        raise SimattrError(f"sim must be 'cosine' or 'dot', got {sim!r}")
    return sim


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
    engine._check_finite(fx, "the model's embedding of the input")
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
    if sim == "dot" and not encoder.normalized:
        return f
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


def explain_bilrp(enc_a: Encoder, enc_b: Encoder, text_a: str, text_b: str, *, layer: int = 0, units="token",
                  sim: str = "cosine", rule: str = "cp", mode: str = "auto", max_memory=None,
                  internal_batch_size=None, truncate: bool = False, contraction: str = "auto",
                  attention: str = "auto") -> Explanation:
    t_start = time.perf_counter()
    check_sim(sim)
    rules.check_rule(rule)
    check_contraction(contraction)
    for enc in (enc_a, enc_b):
        check_encoder(enc)
    units_a, units_b = units if isinstance(units, tuple) else (units, units)
    budget = engine.parse_memory(max_memory)
    same = enc_b is enc_a
    attn = "fused" if all(choose_attention(e, attention, rule) == "fused" for e in (enc_a, enc_b)) else "eager"
    with enc_a.prepared(), (enc_b.prepared() if not same else nullcontext()):
        a = prepare_side(enc_a, text_a, layer, units_a, sim, truncate)
        b = prepare_side(enc_b, text_b, layer, units_b, sim, truncate)
        if a.fx.shape != b.fx.shape:
            raise SimattrError(f"the two towers give embeddings of different sizes {tuple(a.fx.shape)} and "
                               f"{tuple(b.fx.shape)}")
        D = a.fx.shape[-1]
        budget = budget or engine.default_budget(a.x.device)
        roots = [enc_a.model, enc_a.head] + ([] if same else [enc_b.model, enc_b.head])
        Gs, plans, fmods = [], [], []
        with rules.applied(roots, rule, fused_attention=attn == "fused") as state:
            for side in (a, b):
                f = modified_function(side.encoder, side.tokens, layer, sim)
                state.counter.reset()
                with torch.no_grad():
                    fmod = f(side.x)[0]
                state.check_attention(side.encoder.num_layers)
                check_value(fmod, side.fx)
                shape = engine.Shape.of(side.encoder, side.tokens.length, side.x.shape[-1], D, side.x.dtype)
                shape.fused_attention = attn == "fused"
                p = engine.plan(len(side.units), 1, shape, mode=mode, budget=budget,
                                batch_size=internal_batch_size, device=side.x.device)
                p.contraction = contraction
                Gs.append(relevance(f, side.x, side.units, D, p))
                plans.append(p.as_dict())
                fmods.append(fmod)
    A = Gs[0].T.double() @ Gs[1].double()
    total = float(A.sum())
    decomposed = float(fmods[0].double() @ fmods[1].double())
    score = float(a.fx.double() @ b.fx.double())
    residual = [float((G.sum(1).double() - fm.double()).norm() / fm.double().norm().clamp_min(1e-30))
                for G, fm in zip(Gs, fmods)]
    settings = {"layer": layer, "sim": sim, "rule": rule, "units": units if isinstance(units, str) else "spans",
                "mode": [p["mode"] for p in plans], "model_a": enc_a.describe(),
                "model_b": enc_b.describe() if not same else "same",
                "dtype": str(a.x.dtype).replace("torch.", ""), "device": str(a.x.device),
                "attention": attn}
    extras = {"conservation": total / decomposed if decomposed != 0 else None, "rule": rule, "sim": sim,
              "residual_per_side": residual, "plans": plans, "seconds": time.perf_counter() - t_start}
    return Explanation(method="bilrp", matrix=A.cpu().numpy(), tokens_a=a.units.labels, tokens_b=b.units.labels,
                       score=score, terms={"decomposed": decomposed}, error=abs(total - decomposed),
                       settings=settings, extras=extras)
