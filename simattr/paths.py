"""Quadrature rules on [0, 1] for the path integral x(α) = r + α (x − r)."""
from __future__ import annotations

import numpy as np

from .errors import SimattrError

RULES = ("riemann_midpoint", "riemann_trapezoid", "riemann_left", "riemann_right", "gauss_legendre")
ALIASES = {"midpoint": "riemann_midpoint", "trapezoid": "riemann_trapezoid", "gausslegendre": "gauss_legendre",
           "left": "riemann_left", "right": "riemann_right"}


def nodes(rule: str, n: int):
    """Nodes α_i and weights w_i (Σ w_i = 1) of an n-point rule on [0, 1], as float64 numpy arrays."""
    rule = ALIASES.get(rule, rule)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise SimattrError(f"steps must be a positive integer or 'auto', got {n!r}")
    n = int(n)
    if rule == "riemann_midpoint":
        a = (np.arange(n) + 0.5) / n
        w = np.full(n, 1.0 / n)
    elif rule == "riemann_left":
        a = np.arange(n) / n
        w = np.full(n, 1.0 / n)
    elif rule == "riemann_right":
        a = (np.arange(n) + 1.0) / n
        w = np.full(n, 1.0 / n)
    elif rule == "riemann_trapezoid":
        if n == 1:
            return np.array([0.5]), np.array([1.0])
        a = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
    elif rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(n)
        a = (x + 1.0) / 2.0
        w = w / 2.0
    else:
        raise SimattrError(f"unknown quadrature method {rule!r}; choose one of {', '.join(RULES)}")
    return a, w


def canonical(rule: str) -> str:
    rule = ALIASES.get(rule, rule)
    if rule not in RULES:
        raise SimattrError(f"unknown quadrature method {rule!r}; choose one of {', '.join(RULES)}")
    return rule


#: step counts tried, in order, by steps="auto"
AUTO_SCHEDULE = (8, 16, 32, 64, 128, 256)
