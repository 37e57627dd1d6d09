"""LRP rules as modified gradients, zennit-style: rules, a composite that assigns them, and canonizers.

Every rule is written as a function whose *value* is the layer's usual output and whose *derivative* is the
LRP rule's (`detach()` removes a factor from the derivative, in reverse mode and in `torch.func.jvp` alike).
Gradient x input of the modified network then is the LRP relevance (Ali et al. 2022; Achtibat et al. 2024).

Rules (one layer, pure functions of the layer's input):
  norm_rule         LayerNorm with the standard deviation held constant:  (x - mean) / std.detach() * w + b
  rms_rule          RMSNorm with the RMS held constant
  identity_rule     element-wise activations:  x * (act(x) / x).detach()   (value kept exactly; x = 0 safe)
  gate_product      a gated product g(x) * v(x) (GLU MLPs): CP-LRP holds the gate constant, AttnLRP splits 1/2-1/2
  attention         scaled dot-product attention: CP-LRP (AH rule) holds the attention probabilities constant;
                    AttnLRP keeps the softmax gradient and splits both bilinear products (QK^T, PV) 1/2-1/2
  linear_rule       nn.Linear under a bias setting (`BIASES`): plain (absorb), the ε-rule, or the bias share handed
                    back to the inputs; norm_rule likewise for LayerNorm β
Residual sums and pooling keep their plain gradient (and linear layers under bias="absorb", the authors' rule set).

Composite (`applied`): which module gets which rule: `nn.Linear` (bias settings other than absorb, also inside
canonizers), `nn.LayerNorm` / `*RMSNorm` norms (any other `*Norm`
module is an error, not a silent plain gradient), activation modules (the
`transformers.activations` classes and torch's element-wise activations), gated MLPs (ModernBERT `Wi/act/Wo`)
and attention. Attention reaches us through the transformers attention registry (a private implementation
name, registered with the eager mask format, switched on in `config._attn_implementation` for the duration)
or, for families that compute attention inline (MPNet's `q/k/v/o` self-attention), through a canonizer hook
that recomputes the module's output with the rule. Everything is undone when the context exits.
"""
from __future__ import annotations

import abc
import contextlib
import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .errors import SimattrError

RULES = ("cp", "attnlrp")

#: what happens to the biases of linear layers and LayerNorms: the `bias` option of BiLRP (measured on all-MiniLM-L6-v2
#: and all-mpnet-base-v2 by benchmarks/bench_bilrp_rules.py; every setting keeps the forward value exactly):
#:   absorb            biases (and LayerNorm β) are constants: their share of each layer's output gets no relevance —
#:                     the authors' CP-LRP / AttnLRP, gradient x input of the modified network
#:   epsilon           biases absorb, and each linear layer applies the ε-rule: its relevance is scaled by
#:                     z / (z + ε·sign(z)) (z its output, bias included; ε = EPSILON), as zennit's / LXT's Epsilon
#:   epsilon-ln        the ε-rule on linear layers and LayerNorm β handed back to the LayerNorm's inputs as in
#:                     redistribute-abs (β is what absorbs most in all-mpnet-base-v2: handing it back alone takes the
#:                     issue's pair from Σ A / f̃(a)·f̃(b) = 227.6 to 4.9); BiLRP's default
#:   redistribute      each linear layer's and LayerNorm's bias share goes back to its inputs in proportion to their
#:                     signed contributions: the gradient scaled by z / (z − b), stabilised as z / (d + δ·sign(d)),
#:                     d = z − b, δ = REDISTRIBUTE_EPS (zennit's Epsilon(zero_params='bias')). Unstable on real
#:                     models: where the contributions cancel (d ≈ 0) it amplifies, layer after layer (MiniLM with
#:                     δ = 1e-6: gradients of 1e21, then Inf; MPNet with δ = 0.01: Σ A / f̃(a)·f̃(b) ~ 1e6)
#:   redistribute-abs  the bias share in proportion to |contribution|: input i of output j gets
#:                     c_ij + b_j |c_ij| / Σ_k |c_kj| (c_ij = w_ji x_i; for LayerNorm the centring's contributions):
#:                     conservative exactly, layer by layer (Σ A = f̃(a)·f̃(b) with biases, cp rule); costs one more
#:                     matrix product (|x| |W|ᵀ) per linear layer
BIASES = ("absorb", "epsilon", "epsilon-ln", "redistribute", "redistribute-abs")
#: ε of the ε-rule (bias "epsilon" and "epsilon-ln"), in the units of the layers' outputs
EPSILON = 0.03
#: δ of bias="redistribute"
REDISTRIBUTE_EPS = 0.01


# ====================================================================== rules: pure functions
def keep_value(modified: Tensor, value: Tensor) -> Tensor:
    """`value` in the forward pass, the derivative of `modified` in both AD modes."""
    return modified + (value - modified).detach()


def exact_value(modified: Tensor, value: Tensor) -> Tensor:
    """Like `keep_value`, but the forward value is `value` bit for bit: value + (m − m) with m − m = 0 exactly."""
    return value.detach() + (modified - modified.detach())


def _sign(t: Tensor) -> Tensor:
    """sign with sign(0) = +1 (a stabiliser never cancels the denominator)."""
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


def epsilon_scale(z: Tensor, eps: float) -> Tensor:
    """The ε-rule's factor on the relevance (and the gradient) of a layer output z: z / (z + ε·sign(z))."""
    return z / (z + eps * _sign(z))


def redistribute_scale(z: Tensor, d: Tensor, eps: float) -> Tensor:
    """The factor that hands a layer output's bias share z − d back to the inputs: z / d, stabilised
    z / (d + eps·sign(d)); d is the bias-free part (Wx for a linear layer)."""
    return z / (d + eps * _sign(d))


def abs_share(z: Tensor, bias: Tensor, contributions: Tensor) -> Tensor:
    """z − b + b·a/ā: the value z (up to rounding), with the derivative that gives each input its share of the
    bias in proportion to |its contribution|; `contributions` a = Σ_i |c_ji| (differentiable, ā detached)."""
    a_bar = contributions.detach().clamp_min(torch.finfo(contributions.dtype).tiny)
    return (z - bias) + bias * (contributions / a_bar)


def linear_rule(x: Tensor, weight: Tensor, bias: Optional[Tensor], how: str, out: Optional[Tensor] = None) -> Tensor:
    """x Wᵀ + b (or the given `out` of that layer; the value is kept bit for bit) with the derivative of the bias
    setting `how` (`BIASES`): absorb: W; epsilon, epsilon-ln: diag(z / (z + ε sign z)) W;
    redistribute: diag(z / (Wx + δ sign Wx)) W; redistribute-abs: W + diag(b / |W||x|) |W| diag(sign x)."""
    z = torch.nn.functional.linear(x, weight, bias) if out is None else out
    if how == "absorb" or (how.startswith("redistribute") and bias is None):
        return z
    zd = z.detach()
    if how in ("epsilon", "epsilon-ln"):
        return exact_value(z * epsilon_scale(zd, EPSILON), zd)
    if how == "redistribute":
        return exact_value(z * redistribute_scale(zd, zd - bias.detach(), REDISTRIBUTE_EPS), zd)
    if how != "redistribute-abs":
        raise SimattrError(f"unknown bias setting {how!r}")
    contributions = torch.nn.functional.linear(x.abs(), weight.detach().abs())
    return exact_value(abs_share(z, bias.detach(), contributions), zd)


def identity_rule(act: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """act(x) with derivative act(x)/x (the LRP identity rule for element-wise activations).

    Where |x| is (numerically) zero the ratio is set to 0; the output value stays act(x) exactly.
    """
    y = act(x)
    nonzero = x.abs() > torch.finfo(x.dtype).tiny ** 0.5
    ratio = torch.where(nonzero, y / torch.where(nonzero, x, torch.ones_like(x)), torch.zeros_like(x))
    return keep_value(x * ratio.detach(), y)


def norm_rule(x: Tensor, shape, weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
              how: str = "absorb") -> Tensor:
    """LayerNorm over the last len(shape) dims with the standard deviation detached (mean kept).

    β by the bias setting `how`: a constant (absorb, epsilon); handed back to the inputs in proportion to their
    signed contributions (redistribute: derivative scaled by y / (y − β), stabilised as in `redistribute_scale`) or
    to |their contributions| (redistribute-abs, epsilon-ln: see `abs_share`)."""
    dims = tuple(range(-len(shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    std = (centred.pow(2).mean(dims, keepdim=True) + eps).sqrt()
    y = centred / std.detach()
    if weight is not None:
        y = y * weight
    if bias is None:
        return y
    if how in ("absorb", "epsilon"):
        return y + bias
    value = (y + bias).detach()
    if how == "redistribute":
        return exact_value(y * redistribute_scale(value, y.detach(), REDISTRIBUTE_EPS), value)
    # the std held constant, output j is Σ_i (w_j/σ)(δ_ij − 1/n) x_i + β_j: Σ_i |contribution| is
    # |w_j|/σ ((1 − 2/n)|x_j| + Σ_i |x_i| / n); the constant |w_j|/σ cancels in abs_share
    n = math.prod(x.shape[d] for d in dims)
    ax = x.abs()
    contributions = (1 - 2 / n) * ax + ax.mean(dims, keepdim=True)
    return exact_value(abs_share(y + bias, bias, contributions), value)


def rms_rule(x: Tensor, weight: Optional[Tensor], eps: float, offset: float = 0.0) -> Tensor:
    """RMSNorm with the root mean square detached."""
    rms = (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    y = x / rms.detach()
    return y * (weight + offset) if weight is not None else y


def uniform_product(a: Tensor, b: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """op(a, b) (bilinear) with half of the relevance to each operand: ½ op(a, b̄) + ½ op(ā, b)."""
    return 0.5 * op(a, b.detach()) + 0.5 * op(a.detach(), b)


def gate_product(gate: Tensor, value: Tensor, rule: str) -> Tensor:
    """gate * value for gated MLPs: CP-LRP holds the gate constant (like the attention probabilities),
    AttnLRP splits the product uniformly."""
    if rule == "cp":
        return gate.detach() * value
    return uniform_product(gate, value, torch.mul)


def _repeat_heads(t: Tensor, heads: int) -> Tensor:
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def attention(rule: str, query: Tensor, key: Tensor, value: Tensor, mask: Optional[Tensor], scaling: float,
              fused: bool = False) -> Tensor:
    """softmax(q kᵀ · scaling + mask) v  [N, heads, S, d] under the rule.

    cp: the attention probabilities are constants (computed from detached q, k: no tangent work for them).
    With `fused`, the cp rule runs through the fused attention kernel's constant-softmax mode
    (kernels/attention_jvp.py: dO = P·dV in one launch for all tangents, no S×S matrix in memory; backend from
    `simattr.attention.kernel_backend`).
    attnlrp: softmax keeps its gradient (the AttnLRP softmax rule is gradient x input of the softmax), and both
    matrix products split their relevance uniformly between the operands (eager math only).
    """
    key, value = _repeat_heads(key, query.shape[1]), _repeat_heads(value, query.shape[1])
    if fused and rule == "cp":
        from simattr.kernels.attention_jvp import attention as fused_attention

        from .attention import current_backend
        return fused_attention(query, key, value, mask, scaling, constant_softmax=True, backend=current_backend())
    wide = torch.promote_types(query.dtype, torch.float32)
    if rule == "cp":
        scores = torch.matmul(query.detach(), key.detach().transpose(-1, -2)) * scaling
    else:
        scores = uniform_product(query, key.transpose(-1, -2), torch.matmul) * scaling
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores.to(wide), dim=-1).to(query.dtype)
    if rule == "cp":
        return torch.matmul(probs.detach(), value)
    return uniform_product(probs, value, torch.matmul)


# ====================================================================== rules bound to modules (hooks)
class Rule(abc.ABC):
    """What one module propagates: `output(module, args, kwargs, original_output)` -> replacement output."""

    @abc.abstractmethod
    def output(self, module: nn.Module, args: tuple, kwargs: dict, out):
        """The replacement output: the module's value, with the rule's derivative."""

    def hook(self, module: nn.Module, counter: "Counter"):
        def fn(mod, args, kwargs, out):
            counter.add(type(self).__name__)
            return self.output(mod, args, kwargs, out)
        return module.register_forward_hook(fn, with_kwargs=True)


def _first(args, kwargs, *names):
    if args:
        return args[0]
    for n in names:
        if n in kwargs:
            return kwargs[n]
    raise SimattrError(f"cannot find the input of a module among its arguments {list(kwargs)}")


class NormRule(Rule):
    """nn.LayerNorm (and LayerNorm-like modules with weight/bias/eps): standard deviation held constant; β by the
    bias setting (`norm_rule`)."""

    def __init__(self, bias: str = "absorb"):
        self.bias = bias

    def output(self, m, args, kwargs, out):
        x = _first(args, kwargs, "input", "hidden_states", "x")
        shape = getattr(m, "normalized_shape", (x.shape[-1],))
        eps = getattr(m, "eps", None) or getattr(m, "variance_epsilon", 1e-12)
        return norm_rule(x, shape, getattr(m, "weight", None), getattr(m, "bias", None), eps, self.bias)


class LinearRule(Rule):
    """nn.Linear under a bias setting other than "absorb" (`linear_rule`; the module's output value is kept bit for
    bit). Installed also inside canonizers, which call their linear maps as modules."""

    def __init__(self, bias: str):
        self.bias = bias

    def output(self, m, args, kwargs, out):
        x = _first(args, kwargs, "input", "x", "hidden_states")
        return linear_rule(x, m.weight, m.bias, self.bias, out=out)


class RMSNormRule(Rule):
    """RMSNorm (torch's and `*RMSNorm` modules): root mean square held constant."""

    def output(self, m, args, kwargs, out):
        x = _first(args, kwargs, "input", "hidden_states", "x")
        eps = getattr(m, "eps", None) or getattr(m, "variance_epsilon", None) or torch.finfo(x.dtype).eps
        return rms_rule(x, getattr(m, "weight", None), eps).to(out.dtype)


class ActivationRule(Rule):
    """Element-wise activation modules: the identity rule x * (act(x)/x).detach()."""

    def output(self, m, args, kwargs, out):
        x = _first(args, kwargs, "input", "x", "hidden_states")
        return identity_rule(lambda _: out, x)  # the module's own output is act(x)


class GatedMLPRule(Rule):
    """Canonizer for GLU MLPs (ModernBERT: `input, gate = Wi(h).chunk(2); Wo(drop(act(input) * gate))`):
    identity rule on the activation and the rule set's gate product."""

    def __init__(self, rule: str):
        self.rule = rule

    def output(self, m, args, kwargs, out):
        h = _first(args, kwargs, "hidden_states", "input", "x")
        inp, gate = m.Wi(h).chunk(2, dim=-1)
        act = identity_rule(m.act, inp)
        drop = getattr(m, "drop", None) or (lambda t: t)
        return m.Wo(drop(gate_product(act, gate, self.rule)))


class InlineAttentionRule(Rule):
    """Canonizer for self-attention computed inline by a module with `q, k, v, o` linear maps (MPNet):
    recomputes softmax(q kᵀ/√d + position_bias + mask) v with the rule, then `o`."""

    def __init__(self, rule: str):
        self.rule = rule

    def output(self, m, args, kwargs, out):
        names = ("hidden_states", "attention_mask", "position_bias")
        given = dict(zip(names, args))
        given.update({k: v for k, v in kwargs.items() if k in names})
        h = given["hidden_states"]
        mask, bias = given.get("attention_mask"), given.get("position_bias")
        d = m.attention_head_size
        split = lambda t: t.view(*h.shape[:-1], -1, d).transpose(1, 2)
        q, k, v = split(m.q(h)), split(m.k(h)), split(m.v(h))
        extra = None
        for t in (bias, mask):
            if t is not None:
                extra = t if extra is None else extra + t
        c = attention(self.rule, q, k, v, extra, 1.0 / math.sqrt(d))
        c = c.transpose(1, 2).reshape(*h.shape[:-1], -1)
        o = m.o(c)
        return (o,) + tuple(out[1:]) if isinstance(out, tuple) else o


# ====================================================================== module matching (the composite)
def _activation_types() -> tuple:
    import transformers.activations as acts
    skip = {"LinearActivation", "ClassInstantier"}
    hf = tuple(v for k, v in vars(acts).items()
               if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == acts.__name__ and k not in skip)
    torch_acts = (nn.GELU, nn.ReLU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                  nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.ReLU6, nn.Tanhshrink, nn.Softsign,
                  nn.LogSigmoid)
    return hf + torch_acts


def is_gated_mlp(m: nn.Module) -> bool:
    wi, wo = getattr(m, "Wi", None), getattr(m, "Wo", None)
    return (isinstance(wi, nn.Linear) and isinstance(wo, nn.Linear) and isinstance(getattr(m, "act", None), nn.Module)
            and wi.out_features == 2 * wo.in_features)


def is_inline_attention(m: nn.Module) -> bool:
    return (all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q", "k", "v", "o"))
            and hasattr(m, "attention_head_size"))


def is_rms_norm(m: nn.Module) -> bool:
    return isinstance(m, getattr(nn, "RMSNorm", ())) or type(m).__name__.endswith("RMSNorm")


def is_layer_norm(m: nn.Module) -> bool:
    # only torch's LayerNorm (and subclasses): a custom `*LayerNorm` may be an RMS norm (T5), so it is an error
    return isinstance(m, nn.LayerNorm)


def assign(root: nn.Module, rule: str, bias: str = "absorb") -> list:
    """(module, Rule) pairs for every module of `root` that the rule set modifies. Modules inside a module
    handled by a canonizer (the activation of a gated MLP) are left to that canonizer, except linear layers
    under a bias setting other than "absorb" (the canonizers call them as modules, so their hooks run)."""
    acts = _activation_types()
    pairs, covered = [], set()
    for name, m in root.named_modules():
        if bias != "absorb" and isinstance(m, nn.Linear):
            pairs.append((m, LinearRule(bias)))
            continue
        if id(m) in covered:
            continue
        if is_gated_mlp(m):
            pairs.append((m, GatedMLPRule(rule)))
            covered.update(id(c) for c in m.modules())
        elif is_inline_attention(m):
            pairs.append((m, InlineAttentionRule(rule)))
            covered.update(id(c) for c in m.modules())
        elif is_rms_norm(m):
            pairs.append((m, RMSNormRule()))
        elif is_layer_norm(m):
            pairs.append((m, NormRule(bias)))
        elif isinstance(m, acts):
            pairs.append((m, ActivationRule()))
            covered.update(id(c) for c in m.modules())
        elif "Norm" in type(m).__name__ and not isinstance(m, (nn.Identity,)) and not any(True for _ in m.children()):
            raise SimattrError(f"BiLRP has no rule for the normalisation module {name or 'root'} "
                               f"({type(m).__name__})")
    return pairs


# ====================================================================== attention through the registry
class Counter:
    """How often each rule ran (to check that the rules reached every block)."""

    def __init__(self):
        self.counts: dict = {}
        self._lock = threading.Lock()

    def add(self, what: str, n: int = 1):
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + n

    def get(self, what: str) -> int:
        return self.counts.get(what, 0)

    def reset(self):
        with self._lock:
            self.counts.clear()

    @property
    def attention(self) -> int:
        return self.get("attention") + self.get("InlineAttentionRule")


_names = itertools.count()


def _attention_function(rule: str, counter: Counter, fused: bool = False):
    """An attention implementation with the transformers signature (module, q, k, v, mask, scaling, dropout)."""

    def fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        counter.add("attention")
        if dropout and module.training:
            raise SimattrError("BiLRP needs the model in eval mode (attention dropout is active)")
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        mask = attention_mask
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min)
        out = attention(rule, query, key, value, mask, scale, fused=fused)
        return out.transpose(1, 2).contiguous(), None
    return fn


@contextlib.contextmanager
def _registry(configs: list, rule: str, counter: Counter, fused: bool = False):
    """Register a private attention implementation (eager mask format) and switch the configs to it."""
    from transformers.masking_utils import eager_mask

    from . import runtime
    name = f"simattr_bilrp_{rule}_{next(_names)}"
    with runtime.attention_implementation(name, _attention_function(rule, counter, fused), eager_mask):
        saved = [(c, c._attn_implementation) for c in configs]
        try:
            for c in configs:
                c._attn_implementation = name
            yield name
        finally:
            for c, old in saved:
                c._attn_implementation = old


def _configs(roots) -> list:
    seen, out = set(), []
    for root in roots:
        for m in root.modules():
            c = getattr(m, "config", None)
            if c is not None and hasattr(c, "_attn_implementation") and id(c) not in seen:
                seen.add(id(c))
                out.append(c)
    return out


@dataclass
class Applied:
    """What `applied` installed: the rule set, the (module, rule) pairs and the run counter."""

    rule: str
    pairs: list
    counter: Counter = field(default_factory=Counter)
    bias: str = "absorb"

    def check_attention(self, blocks: int, forwards: int = 1):
        """Raise if fewer attention calls than `blocks` per forward went through a rule."""
        if blocks and self.counter.attention < blocks * forwards:
            raise SimattrError(f"the BiLRP attention rule reached {self.counter.attention} of {blocks * forwards} "
                               f"attention layers: this architecture computes attention in a way simattr does "
                               f"not know (neither the transformers attention registry nor q/k/v/o modules)")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise SimattrError(f"unknown BiLRP rule {rule!r}; choose one of {', '.join(RULES)}")
    return rule


def bias_constants(bias: str) -> tuple:
    """The module constants a bias setting reads when it runs (part of a cached G's key)."""
    return {"epsilon": (EPSILON,), "epsilon-ln": (EPSILON,), "redistribute": (REDISTRIBUTE_EPS,)}.get(bias, ())


def check_bias(bias: str) -> str:
    if not isinstance(bias, str) or bias not in BIASES:
        raise SimattrError(f"unknown BiLRP option bias={bias!r}; choose one of {', '.join(BIASES)}")
    return bias


@contextlib.contextmanager
def applied(roots, rule: str = "cp", fused_attention: bool = False, bias: str = "absorb"):
    """Apply the rule set to every module of `roots` (models and heads) while the context is open.

    fused_attention: the cp attention rule of registry-dispatched models runs through the fused kernel.
    bias: what the biases of linear layers and LayerNorms do (`BIASES`; "absorb" is the authors' rule set).
    Installs forward hooks (norms, activations, canonizers) and the attention rule; on exit every hook is
    removed, the configs' attention implementation restored and the registry entries deleted.
    """
    check_rule(rule)
    check_bias(bias)
    roots = [r for r in roots if isinstance(r, nn.Module)]
    unique, seen = [], set()
    for r in roots:
        if id(r) not in seen:
            seen.add(id(r))
            unique.append(r)
    state = Applied(rule, [], bias=bias)
    for r in unique:
        state.pairs.extend(assign(r, rule, bias))
    handles = []
    try:
        with _registry(_configs(unique), rule, state.counter, fused_attention):
            for m, r in state.pairs:
                handles.append(r.hook(m, state.counter))
            yield state
    finally:
        for h in handles:
            h.remove()
