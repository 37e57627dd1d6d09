"""Quadrature rules of the path integral: Gauss–Kronrod nodes and the adaptive rule behind steps="auto"."""
import numpy as np
import pytest

from simattr import quadrature
from simattr.errors import SimattrError

# QUADPACK's qk15 (Piessens et al. 1983): the 15-point Kronrod extension of the 7-point Gauss rule, x ≥ 0 half
QK15_X = [0.991455371120812639, 0.949107912342758525, 0.864864423359769073, 0.741531185599394440,
          0.586087235467691130, 0.405845151377397167, 0.207784955007898468, 0.0]
QK15_W = [0.022935322010529225, 0.063092092629978553, 0.104790010322250184, 0.140653259715525919,
          0.169004726639267903, 0.190350578064785410, 0.204432940075298892, 0.209482141084727828]


def test_kronrod_matches_quadpack_and_is_exact_to_degree_3n_plus_1():
    x, w = quadrature.kronrod(7)
    np.testing.assert_allclose(x[7:][::-1], QK15_X, atol=1e-14)
    np.testing.assert_allclose(w[7:][::-1], QK15_W, atol=1e-14)
    for n in (2, 3, 4, 5):
        x, w = quadrature.kronrod(n)
        assert len(x) == 2 * n + 1 and np.all(np.diff(x) > 0)
        gauss = np.polynomial.legendre.leggauss(n)[0]
        assert all(np.isclose(x, g).any() for g in gauss)  # nested: the Gauss nodes are among them
        for deg in range(3 * n + 2):
            exact = (1 - (-1) ** (deg + 1)) / (deg + 1)
            assert abs((w * x ** deg).sum() - exact) < 1e-13, (n, deg)


def spike(width):
    """A smooth bell plus a narrow spike at 0.4913 (both in two components); exact integral in closed form."""
    from math import erf, sqrt, pi

    def f(al):
        al = np.asarray(al)
        bell = np.exp(-((al - 0.5) / 0.15) ** 2)
        peak = np.exp(-((al - 0.4913) / width) ** 2) / width
        return np.stack([bell, bell + peak], 1)
    g = lambda c, s: s * sqrt(pi) / 2 * (erf((1 - c) / s) - erf((0 - c) / s))
    bell = g(0.5, 0.15)
    return f, np.array([bell, bell + g(0.4913, width) / width])


@pytest.mark.parametrize("width", [2e-2, 2e-3, 2e-4])
def test_adaptive_rule_resolves_a_narrow_spike_that_uniform_steps_miss(width):
    f, exact = spike(width)
    rule = quadrature.AdaptiveRule(f, order=3, exact=exact)
    while np.linalg.norm(rule.error()) > 1e-8 and rule.refine(max_nodes=2000):
        pass
    assert np.linalg.norm(rule.error()) <= 1e-8
    al, w = rule.nodes()
    assert len(al) == rule.n_nodes and w.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose((f(al) * w[:, None]).sum(0), exact, atol=1e-8)  # the nodes are the rule
    am, wm = quadrature.nodes("riemann_midpoint", 256)
    uniform = np.linalg.norm((f(am) * wm[:, None]).sum(0) - exact)
    assert rule.n_nodes < {2e-2: 100, 2e-3: 150, 2e-4: 300}[width]
    if width <= 2e-3:  # 256 uniform steps are far from it
        assert uniform > 1e-4
    # a spike narrower than the first nodes' spacing is found by the widest-interval fallback and, once seen, not
    # lost again when its interval is bisected (the children inherit its estimate)


def test_adaptive_rule_keeps_to_its_node_budget():
    f, exact = spike(1e-4)
    rule = quadrature.AdaptiveRule(f, order=3, exact=exact)
    while rule.refine(max_nodes=50):
        assert rule.n_nodes <= 50
    assert rule.n_nodes <= 50 and rule.refine(max_nodes=50) == 0
    assert np.linalg.norm(rule.error()) > 1e-3  # a spike this narrow is not resolved within 50 nodes


def test_adaptive_rule_is_not_a_fixed_count_rule():
    with pytest.raises(SimattrError, match="per text"):
        quadrature.nodes(quadrature.ADAPTIVE, 16)
    assert quadrature.canonical("adaptive") == quadrature.ADAPTIVE
