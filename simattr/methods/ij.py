"""Integrated Jacobians (Moeller, Nikolaev & Padó 2023; 2024).

G_side[k, u] = ∫₀¹ ⟨∂f_k(r + α(x − r))/∂x, (x − r)|_u⟩ dα,   A = G_aᵀ G_b,
Σ A = s(a,b) − s(a,r_b) − s(r_a,b) + s(r_a,r_b) up to quadrature error (`exact=True`: f′ = f − f(r)).
"""
from __future__ import annotations

import contextlib
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import engine, jobs, paths
from ..contraction import check_backend as check_contraction
from ..encoders import Encoder, Tokens, prepared
from ..errors import SimattrError
from ..explanation import Explanation
from ..references import reference as make_reference
from ..units import Units, make_units


@dataclass
class Side:
    """Everything one tower needs: tokens, input x and reference r at the layer, f, units, f(x), f(r)."""

    encoder: Encoder
    tokens: Tokens
    x: Tensor
    r: Tensor
    f: object
    units: Units
    fx: Tensor
    fr: Tensor
    shape: Optional[engine.Shape] = None  # the memory model's view of this input (set by the job)

    @property
    def delta(self) -> Tensor:
        return self.x - self.r


def prepare_side(encoder: Encoder, text: str, layer: int, ref, units, normalize: bool, truncate: bool) -> Side:
    tokens = encoder.tokenize(text, truncate=truncate)
    encoder.check_layer(layer)
    x = encoder.hidden(tokens, layer)
    r = make_reference(encoder, tokens, layer, ref, x=x)
    f = encoder.function(tokens, layer, normalize=normalize)
    with torch.no_grad():
        both = f(torch.cat([x, r], 0))
    engine._check_finite(both, "the model's embedding of the input or the reference")
    return Side(encoder, tokens, x, r, f, make_units(tokens, units), both[0], both[1])


def similarity_terms(a: Side, b: Side, exact: bool):
    """The four terms of the completeness identity (for f′ = f − f(r) when exact) and their combination."""
    dot = lambda u, v: float((u.double() * v.double()).sum())
    if exact:
        fa, fra = a.fx - a.fr, torch.zeros_like(a.fr)
        fb, frb = b.fx - b.fr, torch.zeros_like(b.fr)
    else:
        fa, fra, fb, frb = a.fx, a.fr, b.fx, b.fr
    terms = {"s(a,b)": dot(fa, fb), "s(a,r_b)": dot(fa, frb), "s(r_a,b)": dot(fra, fb), "s(r_a,r_b)": dot(fra, frb)}
    target = terms["s(a,b)"] - terms["s(a,r_b)"] - terms["s(r_a,b)"] + terms["s(r_a,r_b)"]
    return terms, target


def predicted_error(ea: Tensor, eb: Tensor, da: Tensor, db: Tensor) -> float:
    """|Σ A − Δf_a·Δf_b| when Σ_u G_a[:, u] = Δf_a + e_a (and likewise b)."""
    ea, eb, da, db = (t.double() for t in (ea, eb, da, db))
    return float(abs(ea @ db + da @ eb + ea @ eb))


def choose_steps(sides, pairs: list, rule: str, tol: float, budget: int, schedule=paths.AUTO_SCHEDULE):
    """Smallest step count of the schedule whose completeness error is under `tol` for every pair; the last one if
    none is. The error is measured exactly with one full-tangent JVP per node and text (against f(x) − f(r)), each
    text once however many pairs it is in. History: the largest error over the pairs at each count tried."""
    history = []
    for n in schedule:
        al, w = paths.nodes(rule, n)
        err = {}  # text -> (Σ_u G[:, u] − Δf, Δf)
        for t in {t for pair in pairs for t in pair}:
            s = sides[t]
            g = engine.full_tangent_integral(s.f, s.r, s.delta, al, w, s.shape, budget)
            d = (s.fx - s.fr).to(g.dtype)
            err[t] = (g - d, d)
        worst = max(predicted_error(err[i][0], err[j][0], err[i][1], err[j][1]) for i, j in pairs)
        history.append({"steps": n, "error": worst})
        if worst <= tol:
            break
    return history[-1]["steps"], history


class IJJob:
    """Integrated Jacobians for one job — one pair or many, one set of options — as the hooks of `jobs.run`."""

    def __init__(self, enc_a: Encoder, enc_b: Encoder, *, layer: int = 0, steps=50,
                 quadrature: str = "riemann_midpoint", reference=None, units="token", sim: str = "cosine",
                 exact: bool = False, mode: str = "auto", max_memory=None, internal_batch_size=None,
                 tol: float = 1e-4, truncate: bool = False, attention: str = "auto", contraction: str = "auto"):
        if sim not in ("cosine", "dot"):
            raise SimattrError(f"sim must be 'cosine' or 'dot', got {sim!r}")
        self.rule = paths.canonical(quadrature)
        check_contraction(contraction)
        if not (steps == "auto" or (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool)
                                    and steps >= 1)):
            raise SimattrError(f"steps must be a positive integer or 'auto', got {steps!r}")
        if mode not in engine.PAIR_MODES:
            raise SimattrError(f"unknown mode {mode!r}; choose one of {', '.join(engine.PAIR_MODES)}")
        self.encoders = (enc_a, enc_b)
        self.refs = tuple(reference) if isinstance(reference, (tuple, list)) else (reference, reference)
        self.units = units if isinstance(units, tuple) else (units, units)
        self.reference, self.units_option = reference, units
        self.layer, self.steps, self.sim, self.exact, self.mode, self.tol = layer, steps, sim, exact, mode, tol
        self.budget = engine.parse_memory(max_memory)
        self.batch_size, self.truncate, self.attention, self.contraction = \
            internal_batch_size, truncate, attention, contraction
        self.out_dim, self.history, self.attn = None, None, ("eager", "eager")

    @contextlib.contextmanager
    def context(self):
        enc_a, enc_b = self.encoders
        with prepared(enc_a, enc_b), \
                attention_context(enc_a, self.attention) as attn_a, \
                (attention_context(enc_b, self.attention) if enc_b is not enc_a else nullcontext(attn_a)) as attn_b:
            self.attn = (attn_a, attn_b)
            yield

    def tower_key(self, tower: int):
        same = self.encoders[0] is self.encoders[1] and jobs.same_option(self.refs[0], self.refs[1]) \
            and jobs.same_option(self.units[0], self.units[1])
        return 0 if same else tower

    def cache_key(self, tower: int):
        enc = self.encoders[tower]
        return ("ij", id(enc), str(enc.dtype), str(enc.device), self.layer, self.n_steps, self.rule, self.sim,
                jobs.option_key(self.refs[tower]), jobs.option_key(self.units[tower]), self.truncate)

    def side(self, tower: int, text: str) -> Side:
        enc = self.encoders[tower]
        s = prepare_side(enc, text, self.layer, self.refs[tower], self.units[tower], self.sim == "cosine",
                         self.truncate)
        D = jobs.embedding_size(self, s.fx)
        s.shape = engine.Shape.of(enc, s.tokens.length, s.x.shape[-1], D, s.x.dtype)
        s.shape.fused_attention = self.attention_of(tower, s) == "fused"
        return s

    def attention_of(self, tower: int, side: Side) -> str:
        """The attention `side` runs through: the job's, except eager for texts below the fused minimum."""
        short = side.tokens.length < min_fused_tokens(self.attention)
        return "eager" if self.attn[tower] == "eager" or short else "fused"

    def item(self, side: Side) -> jobs.Item:
        return jobs.Item(active_units(side), side.tokens.length)

    def begin(self, sides, pair_ids: list):
        device = sides[pair_ids[0][0]].x.device
        self.budget = self.budget or engine.default_budget(device)
        steps = self.steps
        if steps == "auto":
            steps, self.history = choose_steps(sides, pair_ids, self.rule, self.tol, self.budget)
        self.n_steps = int(steps)
        self.alphas, self.weights = paths.nodes(self.rule, self.n_steps)

    def attribution(self, side: Side):
        p = engine.plan(len(side.units), len(self.alphas), side.shape,
                        mode=self.mode if self.mode in engine.MODES else "auto", budget=self.budget,
                        batch_size=self.batch_size, device=side.x.device, contraction=self.contraction)
        G = engine.path_attribution(side.f, side.r, side.delta, self.alphas, self.weights, side.units.matrix,
                                    self.out_dim, p)
        return G, p.as_dict()

    def cross(self, Gs: list, other: Side):
        """VJPs on `other` with the columns of the known sides' G's as cotangents, in one reverse-mode run:
        M[j, u] = Σ_n w_n ⟨J_other(x_n)ᵀ G[:, j], T_u⟩ = (Gᵀ G_other)[j, u], split back per G."""
        D = self.out_dim
        cot = torch.cat([G.T for G in Gs])
        p = engine.plan(D + 1, len(self.alphas), other.shape, mode="reverse", budget=self.budget,
                        batch_size=self.batch_size, device=other.x.device, contraction=self.contraction)
        p.reason = f"cross mode: {cot.shape[0]} cotangents (the other side's G columns) instead of {D}"
        M = engine.path_attribution(other.f, other.r, other.delta, self.alphas, self.weights, other.units.matrix,
                                    D, p, cotangents=cot)
        return list(M.split([G.shape[1] for G in Gs])), dict(p.as_dict(), mode="cross-reverse")

    def explanation(self, a: Side, b: Side, A: Tensor, G_a, G_b, plans: list, seconds: float) -> Explanation:
        terms, target = similarity_terms(a, b, self.exact)
        score = float((a.fx.double() * b.fx.double()).sum())
        total = float(A.sum())
        completeness = [None if G is None else float((G.sum(1).double() - (s.fx - s.fr).double()).norm())
                        for G, s in ((G_a, a), (G_b, b))]
        enc_a, enc_b = self.encoders
        settings = {"layer": self.layer, "steps": self.n_steps, "quadrature": self.rule, "sim": self.sim,
                    "exact": self.exact, "reference": _describe(self.reference),
                    "units": self.units_option if isinstance(self.units_option, str) else "spans",
                    "mode": [p["mode"] for p in plans], "tol": self.tol if self.history else None,
                    "model_a": enc_a.describe(), "model_b": enc_b.describe() if enc_b is not enc_a else "same",
                    "dtype": str(a.x.dtype).replace("torch.", ""), "device": str(a.x.device),
                    "attention": [self.attention_of(0, a), self.attention_of(1, b)]}
        extras = {"completeness_per_side": completeness, "plans": plans, "steps_history": self.history,
                  "seconds": seconds}
        extras = {k: v for k, v in extras.items() if v is not None}
        return Explanation(method="ij", matrix=A.cpu().numpy(), tokens_a=a.units.labels, tokens_b=b.units.labels,
                           score=score, terms=terms, error=abs(total - target), settings=settings, extras=extras)


def explain_ij(enc_a: Encoder, enc_b: Encoder, text_a: str, text_b: str, **options) -> Explanation:
    """Integrated Jacobians of one pair; options: those of `IJJob`."""
    return jobs.explain_one(IJJob(enc_a, enc_b, **options), text_a, text_b)


explain_ij.job = IJJob


def active_units(side: Side) -> int:
    """Units of a side whose tangent is not zero (the passes the engine really does)."""
    return len(engine.active_units(side.units.matrix, side.delta))


def _describe(ref):
    if ref is None:
        return "pad"
    if isinstance(ref, (tuple, list)):
        return [_describe(r) for r in ref]
    if isinstance(ref, str):
        return ref if ref in ("pad", "zero") else {"text": ref}
    return type(ref).__name__


def attention_context(encoder: Encoder, attention: str = "auto", constant_softmax: bool = False):
    """Fused attention (Triton kernel with a one-launch JVP for all tangents) where it helps, eager elsewhere.

    attention: "auto", "fused" or "eager" (see `simattr.attention.choose`). The context yields which one is active.
    """
    from .. import attention as fused
    if fused.choose(encoder, attention) == "eager":
        return nullcontext("eager")
    return _yielding(fused.fused_attention(encoder.model, constant_softmax=constant_softmax,
                                           min_tokens=min_fused_tokens(attention)), "fused")


def min_fused_tokens(attention: str) -> int:
    """Shortest sequence the fused attention runs for (shorter ones run eager math): `AUTO_MIN_TOKENS` under "auto"."""
    from .. import attention as fused
    return fused.AUTO_MIN_TOKENS if attention == "auto" else 0


@contextlib.contextmanager
def _yielding(ctx, value):
    """Enter `ctx` and yield `value` (which attention is active)."""
    with ctx:
        yield value
