"""Integrated Jacobians (Moeller, Nikolaev & Padó 2023; 2024).

G_side[k, u] = ∫₀¹ ⟨∂f_k(r + α(x − r))/∂x, (x − r)|_u⟩ dα,   A = G_aᵀ G_b,
Σ A = s(a,b) − s(a,r_b) − s(r_a,b) + s(r_a,r_b) up to quadrature error (`exact=True`: f′ = f − f(r)).
"""
from __future__ import annotations

import contextlib
import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import engine, jobs
from .. import quadrature as quad
from ..encoders import Encoder, Tokens, prepared, prompt_extras
from ..errors import NumericalError, SimattrError, check_finite, warn
from ..explanation import Explanation
from ..options import Cli, Option, Options, PerSide, boolean, integer, one_of, positive_number
from ..options import side as side_value
from ..options import steps as steps_option
from .common_options import path_options
from .path import DotForm, Path, PathJob
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
    key: tuple = ()  # (tower key, text): the job's name of this text (its path nodes are kept under it)

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
    check_finite(both, "the model's embedding of the input or the reference")
    if torch.equal(x, r):
        warn(f"the reference of text {tokens.text[:40]!r} equals the text itself (at layer {layer}): the path is "
             f"empty and its attributions are all zero")
    return Side(encoder, tokens, x, r, f, make_units(tokens, units), both[0], both[1])


def similarity_terms(a: Side, b: Side, exact: bool, form=None):
    """The four terms of the completeness identity (for f′ = f − f(r) when exact) and their combination; `form`
    the pair's bilinear form (`path.DotForm` by default; `path.MaxSimForm` for late interaction)."""
    dot = (form or DotForm()).dot
    if exact:
        fa, fra = a.fx - a.fr, torch.zeros_like(a.fr)
        fb, frb = b.fx - b.fr, torch.zeros_like(b.fr)
    else:
        fa, fra, fb, frb = a.fx, a.fr, b.fx, b.fr
    terms = {"s(a,b)": dot(fa, fb), "s(a,r_b)": dot(fa, frb), "s(r_a,b)": dot(fra, fb), "s(r_a,r_b)": dot(fra, frb)}
    target = terms["s(a,b)"] - terms["s(a,r_b)"] - terms["s(r_a,b)"] + terms["s(r_a,r_b)"]
    return terms, target


def decomposition(score: float, baseline: float, first, interactions: float) -> dict:
    """The score itself decomposed: s(a, b) = s(r_a, r_b) + Σ_u m_a[u] + Σ_v m_b[v] + Σ A, with m_a = G_aᵀ f(r_b)
    and m_b = G_bᵀ f(r_a) (f(a) = f(r_a) + Σ_u G_a[:, u] up to quadrature, and the product expanded); exact up to
    the quadrature error, reported as `error`."""
    m_a, m_b = first
    if m_a is None or m_b is None:
        return None
    sa, sb = float(m_a.sum()), float(m_b.sum())
    total = baseline + sa + sb + interactions
    return {"score": score, "baseline": baseline, "first_order_a": m_a.double().cpu().tolist(),
            "first_order_b": m_b.double().cpu().tolist(), "first_order_sum_a": sa, "first_order_sum_b": sb,
            "interactions": interactions, "sum": total, "error": abs(score - total)}


def predicted_error(ea: Tensor, eb: Tensor, da: Tensor, db: Tensor, form=None) -> float:
    """|Σ A − Δf_a·Δf_b| when Σ_u G_a[:, u] = Δf_a + e_a (and likewise b), under the pair's bilinear form."""
    dot = (form or DotForm()).dot
    return float(abs(dot(ea, db) + dot(da, eb) + dot(ea, eb)))


def choose_steps(sides, pairs: list, rule: str, tol: float, budget: int, schedule=quad.AUTO_SCHEDULE,
                 forms: dict = None):
    """Smallest step count of the schedule whose completeness error is under `tol` for every pair; the last one if
    none is. The error is measured exactly with one full-tangent JVP per node and text (against f(x) − f(r)), each
    text once however many pairs it is in. History: the largest error over the pairs at each count tried."""
    history = []
    for n in schedule:
        al, w = quad.nodes(rule, n)
        err = {}  # text -> (Σ_u G[:, u] − Δf, Δf)
        for t in {t for pair in pairs for t in pair}:
            s = sides[t]
            g = engine.full_tangent_integral(s.f, s.r, s.delta, al, w, s.shape, budget)
            d = (s.fx - s.fr).to(g.dtype)
            err[t] = (g - d, d)
        worst = max(predicted_error(err[i][0], err[j][0], err[i][1], err[j][1], (forms or {}).get((i, j)))
                    for i, j in pairs)
        history.append({"steps": n, "error": worst})
        if worst <= tol:
            break
    return history[-1]["steps"], history


#: default completeness tolerance of steps="auto" (absolute, on the similarity's scale: a cosine)
DEFAULT_TOL = 1e-3
#: default most path nodes per text under steps="auto" (the pass budget: nodes x active units JVPs)
DEFAULT_MAX_STEPS = 512
#: Gauss points per interval of the adaptive rule (each interval holds the 2·3 + 1 = 7 Kronrod nodes; measured
#: on MiniLM and MPNet against 2 and 4: benchmarks/bench_ij_convergence.py)
ADAPTIVE_ORDER = 3
#: refinements without halving the error after which an unmet rule counts as stalled (precision, not nodes)
STALL_REFINEMENTS = 8
#: a fixed-step result warns when its completeness error exceeds this share of |s(a, b)| (steps="auto": above tol)
WARN_RELATIVE_ERROR = 0.01


def text_tolerance(tol: float, sim: str, partner_norms) -> float:
    """The error norm ‖Σ_u G[:, u] − Δf‖ one text may keep so that every pair it is in meets `tol`:
    |ΣA − target| = |e_a·Δ_b + Δ_a·e_b + e_a·e_b| ≤ ‖e_a‖ ‖Δ_b + e_b‖ + ‖Δ_a‖ ‖e_b‖, so ‖e‖ ≤ tol / (2 B) with B a
    bound of the partners' ‖Δf‖: 2 for cosine (unit vectors: any partner, so a text's nodes depend on the text
    alone), the largest partner's ‖Δf‖ in the job for dot, and for late interaction (sim="dot" passed) the pair's
    ‖M Δ_partner‖ (`MaxSimForm.partner_norms`)."""
    bound = 2.0 if sim == "cosine" else max(float(n) for n in partner_norms)
    return tol / (2.0 * max(bound, 1e-12) * 1.01)


def adaptive_rule(side: "Side", target: float, max_nodes: int, budget: int, order: int = None):
    """The composite Gauss rule of `side`'s path refined until its full-tangent error norm is ≤ target or no
    refinement fits in max_nodes: (alphas, weights, info)."""
    order = order or ADAPTIVE_ORDER
    probe = lambda al: engine.full_tangent_values(side.f, side.r, side.delta, al, side.shape, budget)
    rule = quad.AdaptiveRule(probe, order=order, exact=(side.fx - side.fr).double().cpu().numpy())
    errors = [float(np.linalg.norm(rule.error()))]
    while errors[-1] > target and rule.refine(max_nodes=max_nodes):
        errors.append(float(np.linalg.norm(rule.error())))
    al, w = rule.nodes()
    err = errors[-1]
    info = {"nodes": int(len(al)), "intervals": len(rule.intervals), "probe_evaluations": rule.evaluations,
            "error_norm": err, "target": target, "met": err <= target, "stalled": _stalled(errors, target),
            "dtype": str(side.x.dtype).replace("torch.", "")}
    return al, w, info


def _stalled(errors: list, target: float) -> bool:
    """The last STALL_REFINEMENTS refinements did not halve the error: more nodes do not resolve the integrand at
    this precision (seen on all-mpnet-base-v2 at layer 0 in float32, where float64 converges)."""
    return bool(errors[-1] > target and len(errors) > STALL_REFINEMENTS
                and errors[-1] > 0.5 * min(errors[:-STALL_REFINEMENTS]))


def _cli_steps(value: str):
    """--steps: 'auto' or a positive integer (argparse reports a ValueError as an invalid value)."""
    return value if value == "auto" else int(value)


_cli_steps.__name__ = "steps ('auto' or an integer)"  # argparse: "invalid steps ('auto' or an integer) value"


def _reference(v):
    """None / "pad", "zero", a reference text, a tensor [S, H] or [1, S, H], or a callable (tokens, x) -> tensor."""
    if isinstance(v, (tuple, list)):
        raise ValueError("one reference for both texts, or PerSide(ref_a, ref_b) for one each")
    if v is None or isinstance(v, (str, torch.Tensor)) or callable(v):
        return v
    raise ValueError("use 'pad', 'zero', a reference text, a tensor or a callable (tokens, x) -> tensor")


#: the options of method="ij" (simattr.options): API checks, command line, cache key and docs/options.md from here
OPTIONS = Options("ij", [
    Option("steps", "auto", "'auto': path nodes placed per text until the completeness error is under tol; or a "
           "fixed number of steps", steps_option, in_key=True, aliases=("n_steps",), cli=Cli(type=_cli_steps)),
    Option("tol", DEFAULT_TOL, "completeness tolerance of steps='auto' (absolute, on the similarity's scale); "
           "under cosine a text's nodes depend on the text alone, under dot on its largest partner in the job, and a "
           "fixed quadrature's step count on the job's worst pair (so there, a batch's rows can differ from "
           "pair-by-pair ones within tol)",
           positive_number, in_key=True, cli=Cli(type=float)),
    Option("max_steps", DEFAULT_MAX_STEPS, "most path nodes per text under steps='auto' (the adaptive rule: 7 per "
           "interval, at least 7; a fixed quadrature doubles 8, 16, ... 256 up to it); a pair that "
           "does not reach tol within it, or whose texts' rules do not reach their targets, is reported as not "
           "converged", integer(1), in_key=True, cli=Cli(type=int)),
    Option("retry_float64", True, "under steps='auto', a text whose float32 rule does not meet its target (it "
           "stalls, max_steps runs out, or a node gives NaN or Inf) is re-run in a float64 copy of the model; the "
           "better rule is kept", boolean, in_key=True,
           cli=Cli(flag="--no-retry-float64", action="store_false", dest="retry_float64",
                   help="do not re-run a text in float64 when its float32 rule falls short of its target")),
    Option("quadrature", "auto", "path rule: 'auto' (adaptive_gauss with steps='auto', riemann_midpoint with a "
           "fixed count), adaptive_gauss, or a fixed rule", one_of("auto", *quad.RULES, aliases=quad.ALIASES),
           in_key=True, aliases=("method_quadrature",)),
    Option("reference", None, "'pad' (non-special tokens replaced by the pad token), 'zero', a reference text, a "
           "tensor [S, H] or a callable (tokens, x) -> tensor", _reference, per_side=True, in_key=True,
           aliases=("baselines",), doc_default="pad"),
    Option("exact", False, "reference-centred model f' = f - f(r): the matrix sums to f'(a)·f'(b)", boolean,
           cli=Cli(action="store_true")),
] + path_options())


class IJJob(PathJob):
    """Integrated Jacobians for one job — one pair or many, one set of options — as the hooks of `jobs.run`: the
    straight path from r to x, its nodes per text (adaptive) or per job (a fixed rule)."""

    table = OPTIONS
    per_side = ("reference", "units")

    def __init__(self, enc_a: Encoder, enc_b: Encoder, **options):
        super().__init__(enc_a, enc_b, options)
        o = self.options
        steps, quadrature = o.steps, o.quadrature
        if quadrature == "auto":  # adaptive Gauss nodes per text for steps="auto", uniform midpoints for steps=N
            quadrature = quad.ADAPTIVE if steps == "auto" else "riemann_midpoint"
        self.rule = quad.canonical(quadrature)
        if self.rule == quad.ADAPTIVE and steps != "auto":
            raise SimattrError(f"quadrature {quad.ADAPTIVE!r} places its own nodes: it needs steps='auto', got "
                               f"steps={steps!r}")
        self.max_steps, self.retry_float64 = o.max_steps, o.retry_float64
        first = 2 * ADAPTIVE_ORDER + 1  # the adaptive rule's first interval: its Kronrod nodes
        if self.rule == quad.ADAPTIVE and self.max_steps < first:
            raise SimattrError(f"max_steps={self.max_steps} is below the adaptive rule's first interval of {first} "
                               f"nodes (each refinement adds {first} more): use max_steps >= {first}, or steps=N "
                               "for a fixed count")
        if steps == "auto" and self.rule != quad.ADAPTIVE and self.max_steps < quad.AUTO_SCHEDULE[0]:
            raise SimattrError(f"max_steps={self.max_steps} is below the first step count {quad.AUTO_SCHEDULE[0]} "
                               f"that steps='auto' tries with quadrature {self.rule!r} (it doubles: "
                               f"{', '.join(map(str, quad.AUTO_SCHEDULE))}): use max_steps >= "
                               f"{quad.AUTO_SCHEDULE[0]}, or steps=N")
        self.refs = (side_value(o.reference, 0), side_value(o.reference, 1))
        self.reference = o.reference
        self.steps, self.exact, self.tol, self.attention = steps, o.exact, o.tol, o.attention
        self.node_sets = {}  # text key -> (alphas, weights, info) under the adaptive rule
        self.wide = {}  # text key -> its Side in float64 (a stalled float32 path re-run: `retry_wide`)
        self.twins = {}  # tower -> the float64 copy of its encoder (made once per job, dropped with the context)
        self.history, self.attn = None, ("eager", "eager")

    @contextlib.contextmanager
    def context(self):
        enc_a, enc_b = self.encoders
        with prepared(enc_a, enc_b), \
                attention_context(enc_a, self.attention) as attn_a, \
                (attention_context(enc_b, self.attention) if enc_b is not enc_a else nullcontext(attn_a)) as attn_b:
            self.attn = (attn_a, attn_b)
            try:
                yield
            finally:
                self.twins.clear()

    def cache_key(self, tower: int):
        """By value (`jobs.GCache`): the model's weights fingerprint, a reference tensor's contents; NO_CACHE (not
        kept) when the tower's reference or units is a callable."""
        enc = self.encoders[tower]
        # the options marked in_key (OPTIONS) and what they resolve to: the rule, the job's step count
        steps = (ADAPTIVE_ORDER, STALL_REFINEMENTS) if self.rule == quad.ADAPTIVE else self.n_steps
        return jobs.cache_key("ij", jobs.model_fingerprint(enc), str(enc.dtype), str(enc.device), self.rule, steps,
                              *OPTIONS.key(self.options, tower, jobs.option_key))

    def text_cache_key(self, tower: int, text: str):
        """A text's adaptive nodes (their dtype, alphas and weights): under sim="dot" its target depends on its
        partners in the job, so the same text may get other nodes in another job."""
        if self.rule != quad.ADAPTIVE:
            return None
        al, w, info = self.node_sets[(self.tower_key(tower), text)]
        return (info["dtype"], jobs.tensor_key(torch.as_tensor(al)), jobs.tensor_key(torch.as_tensor(w)))

    def side(self, tower: int, text: str) -> Side:
        enc = self.encoders[tower]
        s = prepare_side(enc, text, self.layer, self.refs[tower], self.units[tower], self.sim == "cosine",
                         self.truncate)
        D = self.embedding_size(s.fx)
        s.shape = engine.Shape.of(enc, s.tokens.length, s.x.shape[-1], D, s.x.dtype)
        s.shape.fused_attention = self.attention_of(tower, s) == "fused"
        s.key = (self.tower_key(tower), text)
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
        if self.rule == quad.ADAPTIVE:
            self.n_steps = None
            norms = {t: float((sides[t].fx - sides[t].fr).double().norm()) for pair in pair_ids for t in pair}
            partners = {}
            for i, j in pair_ids:
                if self.late:  # the pair's form: ‖M Δ_b‖ bounds a's error term, ‖Mᵀ Δ_a‖ b's (MaxSimForm)
                    for_a, for_b = self.form(sides[i], sides[j]).partner_norms(sides[i].fx - sides[i].fr,
                                                                               sides[j].fx - sides[j].fr)
                    partners.setdefault(i, []).append(for_a)
                    partners.setdefault(j, []).append(for_b)
                    continue
                partners.setdefault(i, []).append(norms[j])
                partners.setdefault(j, []).append(norms[i])
            for t, other in partners.items():
                s = sides[t]
                if s.key not in self.node_sets:
                    target = text_tolerance(self.tol, "dot" if self.late else self.sim, other)
                    # the whole budget in float32 first: an error that falls slowly may still get there (MPNet
                    # layer 4: 406 nodes), and probes cost 1/units of the passes a float64 re-run would add
                    try:
                        rule = adaptive_rule(s, target, self.max_steps, self.budget)
                    except NumericalError as failed:  # NaN or Inf at a node (a float16 model's overflow)
                        rule = self.retry_wide(s, target, None) if self.retry_float64 else None
                        if rule is None:
                            helps = "" if self.retry_float64 else "; retry_float64=True re-runs it in float64"
                            raise NumericalError(f"{failed} (on the path of text {s.key[1][:40]!r}{helps})") from None
                    # unmet: stalled, or max_steps ran out while the error still fell (MPNet layer 0, the ~32-token
                    # pair's second text: 511 nodes, 4.7e-2, not stalled, where its first text stalled at 3.9e-2)
                    if not rule[2]["met"] and self.retry_float64:
                        rule = self.retry_wide(s, target, rule)
                    self.node_sets[s.key] = rule
            return
        steps = self.steps
        if steps == "auto":
            forms = {(i, j): self.form(sides[i], sides[j]) for i, j in pair_ids} if self.late else None
            schedule = tuple(n for n in quad.AUTO_SCHEDULE if n <= self.max_steps)
            steps, self.history = choose_steps(sides, pair_ids, self.rule, self.tol, self.budget, schedule, forms)
        self.n_steps = int(steps)
        self.alphas, self.weights = quad.nodes(self.rule, self.n_steps)

    def retry_wide(self, side: Side, target: float, narrow):
        """`side`'s path again in float64 (a float64 copy of its encoder, made once per job), used for its G when
        that meets the target or gets closer: where the float32 rule did not meet it — it stalled, or ran out of
        nodes — because the path passes a near-singular point of the model that float32 cannot evaluate
        consistently (all-mpnet-base-v2, layer 0).
        narrow None: the float32 rule met NaN or Inf; the float64 one is used (None: there is none).
        Returns the adaptive rule kept, its info saying what was tried."""
        if side.x.dtype == torch.float64:
            return narrow
        tower = side.key[0]
        if tower not in self.twins:
            self.twins[tower] = self.encoders[tower].copy_as(torch.float64)
        if self.twins[tower] is None:  # a CallableEncoder fixes its own precision
            return narrow
        wide = prepare_side(self.twins[tower], side.key[1], self.layer, self.refs[tower], self.units[tower],
                            self.sim == "cosine", self.truncate)
        wide.shape = engine.Shape.of(self.twins[tower], wide.tokens.length, wide.x.shape[-1], side.shape.out_dim,
                                     torch.float64)
        wide.key = side.key
        rule = adaptive_rule(wide, target, self.max_steps, self.budget)
        if narrow is None:
            first = {"dtype": str(side.x.dtype).replace("torch.", ""), "error_norm": None, "non_finite": True,
                     "probe_evaluations": 0}
        else:
            first = {k: narrow[2][k] for k in ("dtype", "nodes", "probe_evaluations", "error_norm")}
        if narrow is not None and rule[2]["error_norm"] >= narrow[2]["error_norm"]:
            narrow[2]["retried"] = dict(rule[2], used=False)
            return narrow
        self.wide[side.key] = wide
        rule[2]["retried_from"] = first
        rule[2]["probe_evaluations"] += first["probe_evaluations"]
        return rule

    def release(self, tower: int, text: str):
        """The text's last pair of the job is done: its float64 re-run side (hidden states, reference) goes."""
        self.wide.pop((self.tower_key(tower), text), None)

    def nodes_of(self, side: Side):
        """(alphas, weights) of `side`'s path: its adaptive nodes, or the job's fixed rule."""
        if self.rule == quad.ADAPTIVE:
            al, w, _ = self.node_sets[side.key]
            return al, w
        return self.alphas, self.weights

    def path(self, side: Side) -> Path:
        alphas, weights = self.nodes_of(side)
        return Path(side.f, side.r, side.delta, alphas, weights)

    def packed_function(self, sides: list):
        """F(x, rows) of several texts of one tower (their float64 re-runs: of its float64 copy)."""
        return sides[0].encoder.packed_function([s.tokens for s in sides], self.layer, normalize=self.sim == "cosine")

    def pass_side(self, side: Side) -> Side:
        return self.wide.get(side.key, side)

    def reference_embedding(self, side: Side) -> Tensor:
        return self.wide.get(side.key, side).fr  # the f the G integrates (a float64 re-run's)

    def explanation(self, a: Side, b: Side, A: Tensor, G_a, G_b, plans: list, seconds: float,
                    first=(None, None)) -> Explanation:
        form = self.form(a, b)
        score = form.dot(a.fx, b.fx)
        wa, wb = self.wide.get(a.key, a), self.wide.get(b.key, b)  # a G from a float64 re-run integrates its f
        terms, target = similarity_terms(wa, wb, self.exact, form)
        total = float(A.sum())
        completeness = [None if G is None else float((G.sum(1).double() - (s.fx - s.fr).double()).norm())
                        for G, s in ((G_a, wa), (G_b, wb))]
        enc_a, enc_b = self.encoders
        error = abs(total - target)
        relative = error / max(abs(score), 1e-12)
        adaptive = self.rule == quad.ADAPTIVE
        steps_used = [len(self.nodes_of(s)[0]) for s in (a, b)]
        auto = self.steps == "auto"
        infos = [self.node_sets[s.key][2] for s in (a, b)] if adaptive else []
        unmet = [i for i, info in enumerate(infos) if not info["met"]]
        # converged: the pair's completeness within tol and, under adaptive nodes, each text's rule within the
        # target that makes it meet tol with any partner (a pair can meet tol by cancellation alone)
        converged = (error <= self.tol and not unmet) if auto else None
        notes = []
        if auto and not converged:
            short = [infos[i] for i in unmet] or infos
            stalled = any(i["stalled"] for i in short)
            wide = any(i["dtype"] == "float64" for i in short)
            tried = any("retried" in i for i in short)  # float64 tried, no better: the float32 rule kept
            if not adaptive:
                hint = (f"{self.rule} doubles its steps up to max_steps ({steps_used[0]} tried last): raise "
                        "max_steps, or use the adaptive default (quadrature='auto')")
            elif stalled and tried:
                hint = ("its error stopped falling as nodes were added, and a float64 re-run did not get closer: "
                        "attribute at a later layer or use another reference")
            elif stalled and not wide:
                hint = ("its error stopped falling as nodes were added: the path passes a near-singular point of "
                        f"the model that {str(a.x.dtype).replace('torch.', '')} cannot resolve — use "
                        "retry_float64=True or dtype float64 (--dtype float64), or a later layer")
            elif stalled:
                hint = "its error stopped falling even in float64: attribute at a later layer or use another reference"
            else:
                hint = "raise max_steps, or attribute at a later layer"
            if error <= self.tol:  # a text's rule short of its target, the pair's sum within tol by cancellation
                which = " and ".join(f"text {'ab'[i]}'s ({infos[i]['error_norm']:.2e} > {infos[i]['target']:.2e} at "
                                     f"{infos[i]['nodes']} nodes, {infos[i]['dtype']})" for i in unmet)
                notes.append(f"IJ completeness error {error:.2e} is within tol={self.tol:g}, but the path rule of "
                             f"{which} did not reach the error target that guarantees tol within max_steps="
                             f"{self.max_steps}: the pair met tol by cancellation, the matrix is less certain than "
                             f"tol says — {hint}")
            else:
                notes.append(f"IJ completeness error {error:.2e} is above tol={self.tol:g} within max_steps="
                             f"{self.max_steps} (nodes used {steps_used[0]} and {steps_used[1]}): {hint}")
        elif not auto and relative > WARN_RELATIVE_ERROR:
            notes.append(f"IJ completeness error {error:.2e} is {100 * relative:.1f}% of the score (above "
                         f"{100 * WARN_RELATIVE_ERROR:g}%): use steps='auto' or more steps")
        for note in notes:
            warn(note)
        settings = {"layer": self.layer, "steps": "auto" if adaptive else self.n_steps, "quadrature": self.rule,
                    "sim": self.sim, "max_steps": self.max_steps if auto else None,
                    "exact": self.exact, "reference": describe_reference(self.reference),
                    "units": self.units_option if isinstance(self.units_option, str) else "spans",
                    "mode": [p["mode"] for p in plans], "tol": self.tol if auto else None,
                    "model_a": enc_a.describe(), "model_b": enc_b.describe() if enc_b is not enc_a else "same",
                    "dtype": str(a.x.dtype).replace("torch.", ""), "device": str(a.x.device),
                    "attention": [self.attention_of(0, a), self.attention_of(1, b)]}
        extras = {"relative_error": relative, "steps_used": steps_used, "converged": converged,
                  "warnings": notes or None, "completeness_per_side": completeness,
                  "nodes_per_side": copy.deepcopy(infos) if adaptive else None,  # each result its own
                  "plans": plans, "steps_history": self.history, "seconds": seconds,
                  "late_interaction": form.as_dict() if self.late else None,
                  "decomposition": decomposition(score, form.dot(wa.fr, wb.fr), first, total),
                  **prompt_extras(a.tokens, b.tokens, a.units.groups, b.units.groups)}
        extras = {k: v for k, v in extras.items() if v is not None}
        extras.update(self.aspect_extras(a, b, G_a, G_b, score))
        return Explanation(method="ij", matrix=A.cpu().numpy(), tokens_a=a.units.labels, tokens_b=b.units.labels,
                           score=score, terms=terms, error=error, settings=settings, extras=extras,
                           factors=self.factors(G_a, G_b))


def explain_ij(enc_a: Encoder, enc_b: Encoder, text_a: str, text_b: str, **options) -> Explanation:
    """Integrated Jacobians of one pair; options: those of `IJJob`."""
    return jobs.explain_one(IJJob(enc_a, enc_b, **options), text_a, text_b)


explain_ij.job = IJJob


def active_units(side: Side) -> int:
    """Units of a side whose tangent is not zero (the passes the engine really does)."""
    return len(engine.active_units(side.units.matrix, side.delta))


def describe_reference(ref):
    if ref is None:
        return "pad"
    if isinstance(ref, PerSide):
        return [describe_reference(r) for r in ref]
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
