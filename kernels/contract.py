"""Reverse-mode Jacobian contraction in Triton, pooled into attribution units in the same pass:

    out[k, unit[s]] += Σ_n w[n] Σ_h grads[k, n, s, h] · tangent[s, h]          (tokens with unit[s] = -1 skipped)

`grads` [K, N, S, H] are the vmapped VJPs of one chunk of cotangents at one chunk of path nodes (simattr/engine.py,
reverse mode): with one-hot cotangents `out` is a block of G [D, U]; with the other side's G columns as cotangents
(cross mode) it is a block of the token matrix A itself. The PyTorch reference is
`simattr.contraction.contract_torch` (an einsum, which permutes `grads` into a bmm and so reads it about three
times); this kernel streams `grads` once in memory order.

Each program owns BLOCK_S tokens of one cotangent row k and walks the N nodes and the H features in BLOCK_H-wide
tiles, keeping the BLOCK_S partial dot products in registers; the sums land in `out` with one atomic add per token
(several tokens of a word add into one unit; addition order may vary between runs at the last bit). Accumulation is
float32, or float64 for float64 grads. Entry point `contract_triton(grads, tangent, weights, unit_index, n_units)`;
runs on CUDA, or on the CPU under `TRITON_INTERPRET=1` (tests).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _contract_kernel(
    g_ptr, t_ptr, w_ptr, u_ptr, out_ptr,
    N, S, H,
    stride_gk, stride_gn, stride_gs, stride_gh,
    stride_ts, stride_th,
    stride_ok,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr, F64: tl.constexpr,
):
    k = tl.program_id(0).to(tl.int64)  # k * stride_gk can pass 2^31 elements
    sblock = tl.program_id(1)
    offs_s = sblock * BLOCK_S + tl.arange(0, BLOCK_S)
    offs_h = tl.arange(0, BLOCK_H)
    s_in = offs_s < S
    unit = tl.load(u_ptr + offs_s, mask=s_in, other=-1)
    live = s_in & (unit >= 0)
    acc_t = tl.float64 if F64 else tl.float32
    acc = tl.zeros((BLOCK_S,), dtype=acc_t)
    g_base = g_ptr + k * stride_gk + offs_s[:, None] * stride_gs
    t_base = t_ptr + offs_s[:, None] * stride_ts
    for n in range(0, N):
        w = tl.load(w_ptr + n).to(acc_t)
        part = tl.zeros((BLOCK_S,), dtype=acc_t)
        for h0 in range(0, H, BLOCK_H):
            hh = h0 + offs_h
            m = live[:, None] & (hh < H)[None, :]
            g = tl.load(g_base + n * stride_gn + hh[None, :] * stride_gh, mask=m, other=0.0).to(acc_t)
            t = tl.load(t_base + hh[None, :] * stride_th, mask=m, other=0.0).to(acc_t)
            part += tl.sum(g * t, axis=1)
        acc += w * part
    tl.atomic_add(out_ptr + k * stride_ok + unit, acc, mask=live, sem="relaxed")  # no ordering needed: sums only


def contract_triton(grads: torch.Tensor, tangent: torch.Tensor, weights: Optional[torch.Tensor],
                    unit_index: torch.Tensor, n_units: int) -> torch.Tensor:
    """out [K, n_units] (float32; float64 for float64 grads): see the module docstring.

    grads [K, N, S, H] (float32/float64/bfloat16/float16, any strides), tangent [S, H], weights [N] or None (ones),
    unit_index [S] int (-1: the token belongs to no unit).
    """
    if grads.dim() != 4:
        raise ValueError(f"grads must be [K, N, S, H], got {tuple(grads.shape)}")
    K, N, S, H = grads.shape
    if tuple(tangent.shape) != (S, H):
        raise ValueError(f"tangent must be [S, H] = {(S, H)}, got {tuple(tangent.shape)}")
    if unit_index.shape != (S,):
        raise ValueError(f"unit_index must be [S] = [{S}], got {tuple(unit_index.shape)}")
    dev = grads.device
    acc = torch.float64 if grads.dtype == torch.float64 else torch.float32
    if grads.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        grads = grads.float()
    tangent = tangent.to(dev, acc)
    weights = torch.ones(N, dtype=acc, device=dev) if weights is None else weights.to(dev, acc).contiguous()
    if weights.shape != (N,):
        raise ValueError(f"weights must be [N] = [{N}], got {tuple(weights.shape)}")
    unit_index = unit_index.to(dev, torch.int64).contiguous()
    out = torch.zeros(K, n_units, dtype=acc, device=dev)
    if K == 0 or N == 0 or S == 0 or n_units == 0:
        return out
    BLOCK_S = max(1, min(16, triton.next_power_of_2(S)))
    BLOCK_H = max(16, min(128, triton.next_power_of_2(H)))
    grid = (K, triton.cdiv(S, BLOCK_S))
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _contract_kernel[grid](
            grads, tangent, weights, unit_index, out,
            N, S, H,
            grads.stride(0), grads.stride(1), grads.stride(2), grads.stride(3),
            tangent.stride(0), tangent.stride(1),
            out.stride(0),
            BLOCK_S=BLOCK_S, BLOCK_H=BLOCK_H, F64=acc == torch.float64,
            num_warps=4,
        )
    return out
