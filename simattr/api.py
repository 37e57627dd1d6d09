"""Public API: `explain(a, b, model=None, method="ij", **options)` and `Explainer`, which keeps models loaded."""
from __future__ import annotations

import math

from .encoders import Encoder, load_encoder
from .errors import SimattrError
from .explanation import Explanation
from .methods import METHODS

#: Captum-style names accepted as aliases of simattr's own option names
ALIASES = {"n_steps": "steps", "baselines": "reference", "internal_batch_size": "internal_batch_size",
           "method_quadrature": "quadrature", "return_convergence_delta": None}


def _normalise_options(options: dict) -> dict:
    out = {}
    for k, v in options.items():
        if k in ALIASES:
            target = ALIASES[k]
            if target is None:
                continue  # the error is always returned
            if target in options and target != k:
                raise SimattrError(f"give either {k!r} or {target!r}, not both")
            k = target
        out[k] = v
    return out


class Explainer:
    """Keeps one encoder (or a query and a document encoder) loaded across many explanations.

    model: None (bundled all-MiniLM-L6-v2), a path, a SentenceTransformer / HF model object, or an Encoder;
    model_b: optional second tower for text b (asymmetric query/document encoders).
    """

    def __init__(self, model=None, model_b=None, *, pooling=None, tokenizer=None, device=None, dtype=None,
                 max_length=None, **defaults):
        if isinstance(model, (tuple, list)) and len(model) == 2 and model_b is None:
            model, model_b = model
        kw = dict(pooling=pooling, tokenizer=tokenizer, device=device, dtype=dtype, max_length=max_length)
        self.encoder_a: Encoder = load_encoder(model, **kw)
        self.encoder_b: Encoder = self.encoder_a if model_b is None else load_encoder(model_b, **kw)
        self.defaults = _normalise_options(defaults)

    def explain(self, a, b, method: str = None, **options) -> Explanation:
        opts = {**self.defaults, **_normalise_options(options)}
        method = method or opts.pop("method", "ij")
        opts.pop("method", None)
        if method not in METHODS:
            raise SimattrError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
        for name, text in (("a", a), ("b", b)):
            if not isinstance(text, str):
                raise SimattrError(f"text {name} must be a string, got {type(text).__name__}")
            if not text.strip():
                raise SimattrError(f"text {name} is empty")
        fn = METHODS[method]
        try:
            return fn(self.encoder_a, self.encoder_b, a, b, **opts)
        except TypeError as exc:
            if "unexpected keyword argument" in str(exc):
                raise SimattrError(f"method {method!r} does not take option {str(exc).split('argument')[-1].strip()}") from None
            raise


def method_options(method: str):
    """Names of the keyword options a method takes (None for an unknown method)."""
    import inspect

    fn = METHODS.get(method)
    if fn is None:
        return None
    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def explain(a, b, model=None, method: str = "ij", **options) -> Explanation:
    """Explain the similarity of texts a and b: a token-by-token matrix whose sum decomposes the similarity."""
    load_keys = ("model_b", "pooling", "tokenizer", "device", "dtype", "max_length")
    load = {k: options.pop(k) for k in load_keys if k in options}
    return Explainer(model, **load).explain(a, b, method=method, **options)
