"""Fused attention for Hugging Face encoders: `with fused_attention(model): ...`.

The context manager registers an attention implementation ("simattr_fused", or "simattr_fused_cp" for the
CP-LRP rule with the softmax treated as constant in derivatives) in transformers' `ALL_ATTENTION_FUNCTIONS`,
registers the boolean SDPA-style mask builder under the same name in `ALL_MASK_ATTENTION_FUNCTIONS` (so the
attention receives a [B, 1, S_q, S_k] keep-mask, or None without padding), switches the model to it and
restores the previous implementation on exit.

The registered function computes exactly eager attention, softmax(QKᵀ·scaling + mask)·V, through
`simattr.kernels.attention_jvp.FusedAttention`: on CUDA with Triton the fused kernel (its JVP is one launch for all
tangents of a `vmap(jvp)`), elsewhere the same autograd.Function over the PyTorch math, so the plumbing is
identical on the CPU. Training-mode dropout falls back to eager math. It returns no attention weights.

Families whose attention does not go through the registry keep their own attention inside the context:
MPNet (own relative-position attention, `modeling_mpnet.py` never reads ALL_ATTENTION_FUNCTIONS). BERT,
RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT and ModernBERT (its sliding-window layers get the window in the
mask, as eager) dispatch through it. `supports_fused_attention(model)` tells which case a model is.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys
from typing import Optional

import torch
from torch import nn

from simattr.kernels.attention_jvp import FusedAttention, as_4d_mask

from . import backends, runtime
from .errors import SimattrError

NAME = "simattr_fused"
NAME_CONSTANT_SOFTMAX = "simattr_fused_cp"
#: implementations `Encoder.prepared()` keeps (they compute eager attention)
EAGER_COMPATIBLE = ("eager", NAME, NAME_CONSTANT_SOFTMAX)

_backend = contextvars.ContextVar("simattr_attention_backend", default="auto")
#: with attention="auto", sequences shorter than this run eager math inside the fused context: below it the kernel's
#: fixed per-call cost (autograd.Function + vmap rule + two launches per layer) outweighs what it saves. Measured on
#: an H100, IJ end to end (MiniLM shapes, 50 steps), fused vs eager: 16 tokens 0.77x, 24 1.20x, 32 1.06x,
#: 48 1.08x, 64 1.20x, 256 1.64x (benchmarks/RESULTS.md). `fused_attention(min_tokens=...)` applies it.
AUTO_MIN_TOKENS = 24
_min_tokens = contextvars.ContextVar("simattr_attention_min_tokens", default=0)


def _eager_math(module, query, key, value, attention_mask, scaling, dropout):
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros_like(w).masked_fill(~attention_mask, torch.finfo(w.dtype).min)
        w = w + attention_mask
    w = nn.functional.dropout(torch.softmax(w, dim=-1), p=dropout, training=module.training)
    return torch.matmul(w, value).transpose(1, 2).contiguous(), w


def _make_forward(constant_softmax: bool):
    def simattr_fused_attention(module, query, key, value, attention_mask, scaling: Optional[float] = None,
                                dropout: float = 0.0, **kwargs):
        """HF attention interface: (attn_output [B, S, H, d], None). Same math as `eager_attention_forward`."""
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        if dropout and getattr(module, "training", False):
            return _eager_math(module, query, key, value, attention_mask, scaling, dropout)
        if key.shape[1] != query.shape[1]:  # grouped-query attention
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        if not constant_softmax and key.shape[2] < _min_tokens.get():  # short: eager math is faster
            return _eager_math(module, query, key, value, attention_mask, scaling, 0.0)
        mask = as_4d_mask(attention_mask, query.shape[0], query.shape[2], key.shape[2])
        kernel = backends.choose("attention", query.device.type, _backend.get())  # the registry's "torch"/"triton"
        out = FusedAttention.apply(query, key, value, mask, float(scaling), constant_softmax, kernel)[0]
        return out.transpose(1, 2), None

    return simattr_fused_attention


def registered():
    """Both fused implementations and their mask builder in transformers' registry while the context is open
    (simattr.runtime: removed again when the last user leaves)."""
    from transformers.masking_utils import sdpa_mask
    stack = contextlib.ExitStack()
    for name, cp in ((NAME, False), (NAME_CONSTANT_SOFTMAX, True)):
        stack.enter_context(runtime.attention_implementation(name, _make_forward(cp), sdpa_mask))
    return stack


CHOICES = ("auto", "fused", "eager")


def choose(encoder, attention: str = "auto") -> str:
    """Which attention a method runs for `encoder`: "fused" or "eager".

    attention: "auto" (fused on CUDA when Triton imports and the model dispatches through transformers' attention
    registry; eager otherwise), "fused" (also on the CPU: the same autograd.Function over PyTorch math; eager for
    models outside the registry, e.g. MPNet), "eager"."""
    if attention not in CHOICES:
        raise SimattrError(f"attention must be 'auto', 'fused' or 'eager', got {attention!r}")
    model = getattr(encoder, "model", None)
    if attention == "eager" or model is None or not hasattr(model, "config") or not supports_fused_attention(model):
        return "eager"
    if attention == "auto" and not (encoder.device.type == "cuda" and backends.choose("attention", "cuda") == "triton"):
        return "eager"
    return "fused"


def supports_fused_attention(model: nn.Module) -> bool:
    """Whether the model's attention code dispatches through transformers' attention registry."""
    import inspect
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return False
    module = sys.modules.get(type(model).__module__)
    try:
        return module is not None and "ALL_ATTENTION_FUNCTIONS" in inspect.getsource(module)
    except (OSError, TypeError):
        return False


def _set(model: nn.Module, name: Optional[str]) -> None:
    if name is not None and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation(name)
            if model.config._attn_implementation == name:
                return
        except (ValueError, KeyError, ImportError):
            pass
    model.config._attn_implementation = name
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and cfg is not model.config and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name


def _check_backend(backend: str) -> None:
    if backend not in backends.names("attention"):
        raise SimattrError(f"unknown attention backend {backend!r}; choose one of "
                           f"{', '.join(backends.names('attention'))}")


def current_backend() -> str:
    """The fused-attention backend in effect ("auto", "triton" or "torch")."""
    return _backend.get()


@contextlib.contextmanager
def kernel_backend(backend: str):
    """Run the fused attention of every method (IJ, BiLRP) inside the block with `backend`: "auto", "triton"
    (also on CPU tensors under TRITON_INTERPRET=1, for tests) or "torch" (the autograd.Function over PyTorch math)."""
    _check_backend(backend)
    token = _backend.set(backend)
    try:
        yield
    finally:
        _backend.reset(token)


@contextlib.contextmanager
def fused_attention(model: nn.Module, constant_softmax: bool = False, backend: Optional[str] = None,
                    min_tokens: int = 0):
    """Run `model` (a HF PreTrainedModel, or an object with `.model`, e.g. a simattr Encoder) with fused attention.

    constant_softmax: derivatives treat the softmax as constant (CP-LRP); the forward values are unchanged.
    backend: "auto" (the Triton kernel on CUDA when Triton imports, PyTorch math elsewhere), "triton" or "torch";
    None (default) keeps the one set by an enclosing `kernel_backend` (else "auto"). min_tokens: sequences shorter
    than this run eager math instead (not with constant_softmax); `AUTO_MIN_TOKENS` is what attention="auto" uses.
    Models that do not dispatch through the registry (MPNet) are left as they are (yielded unchanged). The previous
    implementation is restored on exit, also after an exception.
    """
    hf = getattr(model, "model", model) if not hasattr(model, "config") else model
    if backend is not None:
        _check_backend(backend)
    if not supports_fused_attention(hf):
        yield model
        return
    with registered():
        previous = hf.config._attn_implementation
        token = _backend.set(backend or _backend.get())
        token_min = _min_tokens.set(int(min_tokens))
        _set(hf, NAME_CONSTANT_SOFTMAX if constant_softmax else NAME)
        try:
            yield model
        finally:
            _set(hf, previous)
            _backend.reset(token)
            _min_tokens.reset(token_min)


__all__ = ["choose", "CHOICES", "AUTO_MIN_TOKENS", "fused_attention", "kernel_backend", "current_backend", "registered",
           "supports_fused_attention", "NAME", "NAME_CONSTANT_SOFTMAX", "EAGER_COMPATIBLE"]
