"""The batched masked MaxSim operator (max and argmax per query token) of the set-based methods.

`maxsim(Q, C, Qmask, Cmask, backend="auto")`: "triton" (simattr/kernels/maxsim.py, CUDA tensors), "cpp" (simattr._C,
CPU float32) or "torch" (`maxsim_torch`, the reference: one bmm, chunked over the batch). Which one "auto" takes,
and why a named one cannot run, is the backend registry's (`simattr.backends`, operator "maxsim").
"""
from __future__ import annotations

import importlib
from typing import Tuple

from . import backends

MAXSIM_BACKENDS = backends.names("maxsim")


def maxsim_torch(Q, C, Qmask=None, Cmask=None, chunk: int = 1 << 24):
    """PyTorch path: masked bmm + max over documents, chunked so no chunk's score tensor exceeds `chunk` elements.
    Same contract as the kernels (lowest index on ties; 0 and -1 for masked / document-less query tokens)."""
    import torch
    Q, C, Qmask, Cmask, B = _prepare(Q, C, Qmask, Cmask)
    Sq, Sd = Q.shape[1], C.shape[1]
    values = torch.zeros(B, Sq, dtype=torch.float32, device=Q.device)
    index = torch.full((B, Sq), -1, dtype=torch.long, device=Q.device)
    if B == 0 or Sq == 0 or Sd == 0:
        return values, index
    step = max(1, chunk // max(1, Sq * Sd))
    for s in range(0, B, step):
        e = min(B, s + step)
        q = Q if Q.shape[0] == 1 else Q[s:e]
        c = C if C.shape[0] == 1 else C[s:e]
        cm = Cmask if Cmask.shape[0] == 1 else Cmask[s:e]
        qm = Qmask if Qmask.shape[0] == 1 else Qmask[s:e]
        S = torch.matmul(q, c.transpose(1, 2)).float()
        S = S.masked_fill(~cm[:, None, :], float("-inf"))
        v, i = S.max(dim=-1)
        ok = qm & cm.any(-1, keepdim=True)
        values[s:e] = torch.where(ok, v, torch.zeros((), device=v.device))
        index[s:e] = torch.where(ok, i, torch.full((), -1, device=i.device))
    return values, index


def _prepare(Q, C, Qmask, Cmask):
    import torch
    from .errors import SimattrError
    if Q.dim() == 2:
        Q = Q.unsqueeze(0)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    if Q.dim() != 3 or C.dim() != 3 or Q.shape[-1] != C.shape[-1]:
        raise SimattrError(f"maxsim needs Q [B, S_q, D] and C [B, S_d, D] of one width, got {tuple(Q.shape)} and "
                           f"{tuple(C.shape)}")
    if Q.shape[0] != C.shape[0] and 1 not in (Q.shape[0], C.shape[0]):
        raise SimattrError(f"maxsim batch sizes {Q.shape[0]} and {C.shape[0]} differ and neither is 1")
    if Q.device != C.device:
        raise SimattrError(f"Q and C are on different devices ({Q.device}, {C.device})")
    B = max(Q.shape[0], C.shape[0])
    if C.dtype != Q.dtype:
        C = C.to(Q.dtype)
    Qmask = torch.ones(Q.shape[:2], dtype=torch.bool, device=Q.device) if Qmask is None else Qmask.to(Q.device).bool()
    Cmask = torch.ones(C.shape[:2], dtype=torch.bool, device=C.device) if Cmask is None else Cmask.to(C.device).bool()
    if Qmask.dim() == 1:
        Qmask = Qmask.unsqueeze(0)
    if Cmask.dim() == 1:
        Cmask = Cmask.unsqueeze(0)
    if Qmask.shape[-1] != Q.shape[1] or Cmask.shape[-1] != C.shape[1]:
        raise SimattrError("maxsim masks must be [B, S] with the token counts of Q and C")
    return Q, C, Qmask, Cmask, B


def mask_density(Q, C, Qmask=None, Cmask=None) -> float:
    """Share of the padded B x Sq x Sd grid whose query and document tokens are both unmasked."""
    Q, C, Qmask, Cmask, B = _prepare(Q, C, Qmask, Cmask)
    total = B * Q.shape[1] * C.shape[1]
    if total == 0:
        return 1.0
    nq = Qmask.sum(-1).expand(B).double()
    nd = Cmask.sum(-1).expand(B).double()
    return float((nq * nd).sum()) / total


def choose_maxsim_backend(device_type: str, dtype, backend: str = "auto", density: float = 1.0) -> str:
    """The backend `maxsim` runs for tensors on `device_type` of `dtype` whose masks keep `density` of the score
    grid (raises if a named backend cannot run)."""
    return backends.choose("maxsim", device_type, backend, dtype=dtype, density=density)


def maxsim(Q, C, Qmask=None, Cmask=None, backend: str = "auto") -> Tuple:
    """Batched masked MaxSim: values [B, S_q] (float32) and index [B, S_q] (int64, lowest index on ties) of
    max_j <Q[b, i], C[b, j]> over unmasked j; masked or document-less query tokens get 0 and -1.
    Q [B|1, S_q, D], C [B|1, S_d, D]; a batch of 1 is broadcast (one query against many documents)."""
    import torch
    Q, C, Qmask, Cmask, B = _prepare(Q, C, Qmask, Cmask)
    density = mask_density(Q, C, Qmask, Cmask) if backend == "auto" and Q.device.type == "cpu" else 1.0
    which = choose_maxsim_backend(Q.device.type, Q.dtype, backend, density)
    if which == "torch":
        return maxsim_torch(Q, C, Qmask, Cmask)
    if which == "cpp":
        importlib.import_module("simattr._C")
        return torch.ops.simattr.maxsim(Q.float(), C.float(), Qmask, Cmask)
    from simattr.kernels.maxsim import maxsim_triton
    return maxsim_triton(Q, C, Qmask, Cmask)
