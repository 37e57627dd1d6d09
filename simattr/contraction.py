"""The reverse-mode Jacobian contraction and its backends.

    out[k, unit[s]] += Σ_n w[n] Σ_h grads[k, n, s, h] · tangent[s, h]          (tokens with unit[s] = -1 skipped)

`grads` [K, N, S, H] is one chunk of vmapped VJPs (K cotangents at N path nodes) in `engine.reverse_mode`; the
result is that chunk's block of G [D, U] (one-hot cotangents) or of the token matrix A itself (cross mode, where the
cotangents are the other side's G columns) — reduced and pooled into attribution units in one pass, so neither the
Jacobian nor the token-level [K, S] block is ever stored.

Backends: "torch" (`contract_torch`, the reference: einsum + index_add), "cpp" (csrc/cpu/contract.cpp, OpenMP,
vectorised), "triton" (kernels/contract.py), "cuda" (csrc/cuda/contract.cu, built with SIMATTR_BUILD_CUDA=1).
"auto" picks a kernel only where it was measured faster than the reference (benchmarks/bench_contract.py,
benchmarks/RESULTS.md): see `AUTO_KERNEL`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends

BACKENDS = backends.names("contraction")
#: device type -> the kernel "auto" uses there: the registry's table (`simattr.backends.AUTO`)
AUTO_KERNEL = backends.AUTO["contraction"]


def unit_index(unit_matrix: Tensor) -> Optional[Tensor]:
    """[S] int64: the unit of each token (-1: none), when `unit_matrix` [U, S] is 0/1 with at most one unit per token
    (every `simattr.units` matrix is); None otherwise (the caller then pools token columns with a matmul)."""
    m = unit_matrix.detach()
    if m.numel() and not bool(((m == 0) | (m == 1)).all()):
        return None
    if m.numel() and bool((m.sum(0) > 1).any()):
        return None
    if m.shape[0] == 0:
        return torch.full((m.shape[1],), -1, dtype=torch.long, device=m.device)
    idx = m.argmax(0).long()
    return torch.where(m.sum(0) > 0, idx, torch.full_like(idx, -1))


def contract_torch(grads: Tensor, tangent: Tensor, weights: Optional[Tensor], unit_index: Tensor,
                   n_units: int) -> Tensor:
    """The reference: einsum over the nodes and features in the grads' dtype, then the tokens added into units."""
    acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
    K, N = grads.shape[:2]
    w = torch.ones(N, dtype=grads.dtype, device=grads.device) if weights is None else weights.to(grads)
    tok = torch.einsum("knsh,sh,n->ks", grads, tangent.to(grads), w).to(acc)
    out = torch.zeros(K, n_units, dtype=acc, device=grads.device)
    idx = unit_index.to(grads.device, torch.long)
    live = idx >= 0
    return out.index_add_(1, idx[live], tok[:, live])


def _has_op() -> bool:
    return backends.has_operator("contract_tangent")


def _cuda_op() -> bool:
    return _has_op() and backends.extension_with_cuda()


def choose_backend(device_type: str, backend: str = "auto") -> str:
    """The backend `contract` runs for tensors on `device_type` (raises if a named one cannot run there)."""
    return backends.choose("contraction", device_type, backend)


def contract(grads: Tensor, tangent: Tensor, weights: Optional[Tensor], unit_index: Tensor, n_units: int,
             backend: str = "auto") -> Tensor:
    """out [K, n_units] (float32; float64 for float64 grads): see the module docstring."""
    which = choose_backend(grads.device.type, backend)
    if which == "torch":
        return contract_torch(grads, tangent, weights, unit_index, n_units)
    if which == "triton":
        from simattr.kernels.contract import contract_triton
        return contract_triton(grads, tangent, weights, unit_index, n_units)
    return torch.ops.simattr.contract_tangent(grads, tangent, weights, unit_index, n_units)


def info() -> dict:
    """Which contraction backend "auto" uses on each device, and why the others are not used."""
    return backends.report("contraction")
