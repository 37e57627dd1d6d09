"""Optimal-transport solvers shared by the OT method (simattr/methods/ot.py) and the alignment post-processing
(simattr/align.py): a batched log-domain Sinkhorn (`sinkhorn_log`) and exact EMD through POT (`emd_pot`)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import NumericalError, SimattrError, warn

#: a Sinkhorn plan whose marginals are off by more than this (L1, and more than the caller's tol) is reported: it is
#: not a transport plan (eps too small for max_iter iterations)
SINKHORN_WARN = 1e-4
#: ... and one off by more than this is refused (NumericalError): its mass is not where the costs say
SINKHORN_FAIL = 0.1


def sinkhorn_log(C: Tensor, a: Tensor, b: Tensor, eps: float = 0.01, max_iter: int = 2000, tol: float = 1e-7,
                 check_every: int = 10):
    """Entropic OT in the log domain, batched: plans [B, n, m] and info {iterations, marginal_error}.

    C [B, n, m] costs; a [B, n], b [B, m] non-negative masses (each row summing to 1; zero mass = padding, whose
    rows/columns get no transport). Minimises ⟨P, C⟩ − ε H(P) subject to P1 = a, Pᵀ1 = b by alternating dual
    (f, g) updates with logsumexp, so small ε does not underflow. Stops when the row-marginal L1 error of every
    pair is under `tol` (the column marginals are exact after each g-update) or after `max_iter` iterations."""
    if eps <= 0:
        raise SimattrError(f"eps must be positive, got {eps!r}")
    if C.dim() == 2:
        C, a, b = C[None], a[None], b[None]
    C = torch.nan_to_num(C, nan=0.0, posinf=0.0, neginf=0.0)
    loga = torch.log(a.to(C.dtype))
    logb = torch.log(b.to(C.dtype))
    f = torch.zeros_like(a, dtype=C.dtype)
    g = torch.zeros_like(b, dtype=C.dtype)
    err = float("inf")
    it = 0
    for it in range(1, int(max_iter) + 1):
        f = eps * (loga - torch.logsumexp((g[:, None, :] - C) / eps, dim=2))
        g = eps * (logb - torch.logsumexp((f[:, :, None] - C) / eps, dim=1))
        if it % check_every == 0 or it == max_iter:
            P = torch.exp((f[:, :, None] + g[:, None, :] - C) / eps)
            err = float((P.sum(2) - a).abs().sum(1).max())
            if err < tol:
                break
    P = torch.exp((f[:, :, None] + g[:, None, :] - C) / eps)
    if not torch.isfinite(P).all():
        raise NumericalError("Sinkhorn produced NaN or Inf; check the masses (each pair needs positive mass)")
    err = max(err, float((P.sum(1) - b).abs().sum(1).max()))  # both marginals
    if err > max(tol, SINKHORN_WARN):
        what = (f"Sinkhorn did not converge: marginal error {err:.2e} after {it} iterations (eps={eps:g}, "
                f"tol={tol:g})")
        if err > SINKHORN_FAIL:
            raise NumericalError(f"{what}; the result would not be a transport plan: raise max_iter or eps, or "
                                 f"use solver='emd'")
        warn(f"{what}: raise max_iter or eps, or use solver='emd'")
    return P, {"iterations": it, "marginal_error": err}


def emd_pot(C: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        import ot
    except ImportError:
        raise SimattrError("solver 'emd' needs the POT package (pip install pot)") from None
    return np.asarray(ot.emd(a / a.sum(), b / b.sum(), np.ascontiguousarray(C, dtype=np.float64)))


def pot_available() -> bool:
    try:
        import ot  # noqa: F401
        return True
    except ImportError:
        return False
