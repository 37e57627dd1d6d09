"""Quadrature rules on [0, 1] for the path integral x(α) = r + α (x − r)."""
from __future__ import annotations

import numpy as np

from .errors import SimattrError

#: nodes placed per text by `AdaptiveRule` (steps="auto")
ADAPTIVE = "adaptive_gauss"
#: rules of a fixed step count (steps=N)
FIXED_RULES = ("riemann_midpoint", "riemann_trapezoid", "riemann_left", "riemann_right", "gauss_legendre")
RULES = FIXED_RULES + (ADAPTIVE,)
ALIASES = {"midpoint": "riemann_midpoint", "riemann_middle": "riemann_midpoint", "trapezoid": "riemann_trapezoid", "gausslegendre": "gauss_legendre",
           "left": "riemann_left", "right": "riemann_right",
           "adaptive": ADAPTIVE}


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
    elif rule == ADAPTIVE:
        raise SimattrError(f"{ADAPTIVE!r} nodes are placed per text (steps='auto'), not for a fixed count")
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


# ---------------------------------------------------------------------- adaptive nodes (steps="auto")
def kronrod(n: int):
    """The (2n+1)-point Gauss–Kronrod rule on [-1, 1] that extends the n-point Gauss–Legendre rule: nodes (the n
    Gauss nodes and the n + 1 roots of the Stieltjes polynomial E_{n+1}, which is orthogonal to every polynomial of
    degree ≤ n under the weight P_n) and weights (exact for degree 3n + 1), as float64 arrays in increasing order."""
    from numpy.polynomial import legendre as leg
    xq, wq = leg.leggauss(3 * n + 3)
    P = np.stack([leg.legval(xq, np.eye(n + 2)[i]) for i in range(n + 2)])
    M = np.einsum("q,iq,jq->ji", wq, P * P[n], P[:n + 1])  # M[j, i] = ∫ P_n P_i P_j
    c = np.linalg.lstsq(M[:, :n + 1], -M[:, n + 1], rcond=None)[0]
    x = np.sort(np.concatenate([leg.leggauss(n)[0], leg.legroots(np.append(c, 1.0)).real]))
    V = np.stack([leg.legval(x, np.eye(2 * n + 1)[j]) for j in range(2 * n + 1)])
    w = np.linalg.solve(V, np.eye(2 * n + 1)[0] * 2.0)
    return x, w


class AdaptiveRule:
    """Composite Gauss–Kronrod nodes on [0, 1], refined where a vector integrand needs them.

    Every interval carries the (2·order + 1)-point Kronrod rule — its nodes are the ones the attribution uses — and
    the `order`-point Gauss rule nested in it, whose difference from the Kronrod value estimates the interval's
    error. `refine` bisects the intervals whose estimate is largest; when the exact error of the whole rule (the
    caller knows the integral) is not accounted for by the estimates — a feature narrower than every interval,
    missed by all of its nodes — the descendants of an interval whose estimate once explained it are bisected (a
    spike seen and lost between the children's nodes), else the widest intervals, so a missed spike is found by
    refinement, not hidden by it.

    integrand(alphas [n]) -> values [n, D] (a torch tensor or numpy array); the rule evaluates it once per node of
    each interval it creates, and the nodes it ends with are all nodes it evaluated but those of bisected
    intervals.
    """

    def __init__(self, integrand, order: int = 3, exact=None):
        self.integrand, self.order, self.exact = integrand, int(order), exact
        self._xk, self._wk = kronrod(self.order)
        xg, self._wg = np.polynomial.legendre.leggauss(self.order)
        self._gauss_at = np.searchsorted(self._xk, xg - 1e-12)  # the Gauss nodes among the Kronrod nodes
        assert np.allclose(self._xk[self._gauss_at], xg)
        self.intervals = []  # (lo, hi, kronrod integral [D], gauss integral [D], hint)
        self.evaluations = 0
        self._add([(0.0, 1.0)])

    def _add(self, spans, hints=None):
        al = np.concatenate([lo + (hi - lo) * (self._xk + 1) / 2 for lo, hi in spans])
        vals = self.integrand(al)
        vals = vals.double().cpu().numpy() if hasattr(vals, "double") else np.asarray(vals, dtype=np.float64)
        self.evaluations += len(al)
        k = len(self._xk)
        for i, (lo, hi) in enumerate(spans):
            v = vals[i * k:(i + 1) * k]
            h = (hi - lo) / 2
            hint = 0.0 if hints is None else hints[i]
            self.intervals.append((lo, hi, h * (self._wk @ v), h * (self._wg @ v[self._gauss_at]), hint))
        self.intervals.sort(key=lambda t: t[0])

    @property
    def per_interval(self) -> int:
        return len(self._xk)

    @property
    def n_nodes(self) -> int:
        return self.per_interval * len(self.intervals)

    def integral(self) -> np.ndarray:
        """The composite Kronrod rule's integral of the integrand (what the attribution's nodes give)."""
        return sum(t[2] for t in self.intervals)

    def estimates(self) -> np.ndarray:
        return np.array([np.linalg.norm(t[2] - t[3]) for t in self.intervals])

    def error(self) -> np.ndarray:
        """The error vector of the rule: exact when the integral is known, else the Gauss–Kronrod estimate."""
        if self.exact is not None:
            return self.integral() - np.asarray(self.exact, dtype=np.float64)
        return sum(t[2] - t[3] for t in self.intervals)

    def refine(self, share: float = 0.5, max_nodes: int = None) -> int:
        """Bisect the intervals with the largest error estimates (every one above `share` of the largest). When the
        estimates explain less than half of the exact error, a feature is missed by every node: bisect instead the
        intervals that descend from one whose estimate could explain it (a spike seen once and lost between the
        children's nodes), else the widest ones. At most as many as keep the rule within `max_nodes` (largest
        first). Returns the nodes added (0: none fit)."""
        est = self.estimates()
        widths = np.array([t[1] - t[0] for t in self.intervals])
        hints = np.array([t[4] for t in self.intervals])
        missing = np.linalg.norm(self.error()) - est.sum()
        if missing > est.sum():
            key = hints
            pick = np.flatnonzero(hints >= 0.5 * missing)
            if len(pick) == 0:
                key, pick = widths, np.flatnonzero(widths >= widths.max() * (1 - 1e-9))
        else:
            key, pick = est, np.flatnonzero(est >= share * est.max())
        pick = pick[np.argsort(-key[pick], kind="stable")]
        if max_nodes is not None:
            pick = pick[:max(0, (int(max_nodes) - self.n_nodes) // self.per_interval)]
        if len(pick) == 0:
            return 0
        spans, inherited, before = [], [], self.n_nodes
        for i in sorted(pick, reverse=True):
            lo, hi, kr, ga, hint = self.intervals.pop(i)
            mid = (lo + hi) / 2
            spans += [(lo, mid), (mid, hi)]
            inherited += [max(hint, float(np.linalg.norm(kr - ga)))] * 2
        self._add(spans, inherited)
        return self.n_nodes - before

    def nodes(self):
        """(alphas, weights) of the composite Kronrod rule, float64, Σ w = 1."""
        al = np.concatenate([t[0] + (t[1] - t[0]) * (self._xk + 1) / 2 for t in self.intervals])
        w = np.concatenate([(t[1] - t[0]) / 2 * self._wk for t in self.intervals])
        return al, w
