"""Batched masked MaxSim in Triton: for every query token, the maximum (and its argmax) over a document's tokens of
the dot product, without materialising the B × S_q × S_d score tensor.

    values[b, i] = max_{j : Cmask[b, j]} <Q[b, i], C[b, j]>,   index[b, i] = the lowest such j attaining it

Each program owns BLOCK_Q query tokens of one pair and walks the document in tiles of BLOCK_D tokens, each tile
a sum of BLOCK_K-wide dot products, keeping a running maximum and argmax in registers. Tie rule: the lowest
document index wins (strict ">" across tiles, left tie-break inside a tile). A masked query token, or a query
token whose document has no unmasked token, gets value 0 and index -1. Accumulation is in float32 (fp16/bf16
inputs are read as they are); float32 inputs use IEEE (not TF32) products, so results match a float32 matmul.

`Q` may have batch 1 against `C` of batch B (one query against many documents) and vice versa: the singleton
batch is broadcast through a zero stride, never copied. Entry point: `maxsim_triton(Q, C, Qmask, Cmask)`.
Runs on CUDA, or on the CPU under `TRITON_INTERPRET=1` (for tests).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _maxsim_kernel(
    q_ptr, c_ptr, qm_ptr, cm_ptr, val_ptr, idx_ptr,
    SQ, SD, D,
    stride_qb, stride_qs, stride_qd,
    stride_cb, stride_cs, stride_cd,
    stride_qmb, stride_cmb,
    stride_ob,
    BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
):
    b = tl.program_id(0)
    qblock = tl.program_id(1)
    offs_q = qblock * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    q_in = offs_q < SQ
    qmask = tl.load(qm_ptr + b * stride_qmb + offs_q, mask=q_in, other=0) != 0

    best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
    best_idx = tl.full((BLOCK_Q,), -1, tl.int32)
    q_base = q_ptr + b * stride_qb + offs_q[:, None] * stride_qs
    c_base = c_ptr + b * stride_cb
    for d0 in range(0, SD, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_in = offs_d < SD
        cmask = tl.load(cm_ptr + b * stride_cmb + offs_d, mask=d_in, other=0) != 0
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + offs_k
            k_in = kk < D
            q = tl.load(q_base + kk[None, :] * stride_qd, mask=q_in[:, None] & k_in[None, :], other=0.0)
            c = tl.load(c_base + offs_d[:, None] * stride_cs + kk[None, :] * stride_cd,
                        mask=d_in[:, None] & k_in[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(q, tl.trans(c), acc, input_precision="ieee")
            else:
                acc = tl.dot(q, tl.trans(c), acc)
        acc = tl.where(cmask[None, :], acc, float("-inf"))
        tile_best, tile_arg = tl.max(acc, axis=1, return_indices=True, return_indices_tie_break_left=True)
        tile_arg = tile_arg.to(tl.int32) + d0
        better = tile_best > best  # strict: an earlier tile keeps its tie
        best_idx = tl.where(better, tile_arg, best_idx)
        best = tl.where(better, tile_best, best)

    valid = qmask & (best_idx >= 0)
    best = tl.where(valid, best, 0.0)
    best_idx = tl.where(valid, best_idx, -1)
    tl.store(val_ptr + b * stride_ob + offs_q, best, mask=q_in)
    tl.store(idx_ptr + b * stride_ob + offs_q, best_idx, mask=q_in)


def _block(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def maxsim_triton(Q: torch.Tensor, C: torch.Tensor, Qmask: Optional[torch.Tensor] = None,
                  Cmask: Optional[torch.Tensor] = None, ieee: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """values [B, S_q] float32 and index [B, S_q] int64 of the masked MaxSim (see the module docstring).

    Q [Bq, S_q, D], C [Bc, S_d, D] with Bq == Bc or one of them 1; masks [B?, S] bool (None: all tokens).
    `ieee=False` lets float32 products use TF32 on GPUs that have it (faster, ~1e-3 relative error).
    """
    if Q.dim() != 3 or C.dim() != 3:
        raise ValueError(f"Q and C must be [batch, tokens, dim], got {tuple(Q.shape)} and {tuple(C.shape)}")
    if Q.shape[-1] != C.shape[-1]:
        raise ValueError(f"Q and C have different widths {Q.shape[-1]} and {C.shape[-1]}")
    Bq, SQ, D = Q.shape
    Bc, SD, _ = C.shape
    if Bq != Bc and 1 not in (Bq, Bc):
        raise ValueError(f"batch sizes {Bq} and {Bc} differ and neither is 1")
    B = max(Bq, Bc)
    dev = Q.device
    if C.dtype != Q.dtype:
        C = C.to(Q.dtype)
    if Q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        Q, C = Q.float(), C.float()
    if Qmask is None:
        Qmask = torch.ones(Bq, SQ, dtype=torch.bool, device=dev)
    if Cmask is None:
        Cmask = torch.ones(Bc, SD, dtype=torch.bool, device=dev)
    Qmask = Qmask.to(device=dev, dtype=torch.int8).contiguous()
    Cmask = Cmask.to(device=dev, dtype=torch.int8).contiguous()
    if Qmask.shape[-1] != SQ or Cmask.shape[-1] != SD:
        raise ValueError("mask lengths do not match the token dimensions")
    values = torch.empty(B, SQ, dtype=torch.float32, device=dev)
    index = torch.empty(B, SQ, dtype=torch.int32, device=dev)
    if B == 0 or SQ == 0:
        return values, index.long()
    if SD == 0:
        return values.zero_(), index.fill_(-1).long()
    BLOCK_Q = _block(SQ, 16, 64)
    BLOCK_D = _block(SD, 16, 64)
    BLOCK_K = _block(D, 16, 64)
    grid = (B, triton.cdiv(SQ, BLOCK_Q))
    _maxsim_kernel[grid](
        Q, C, Qmask, Cmask, values, index,
        SQ, SD, D,
        Q.stride(0) if Bq > 1 else 0, Q.stride(1), Q.stride(2),
        C.stride(0) if Bc > 1 else 0, C.stride(1), C.stride(2),
        Qmask.stride(0) if Qmask.shape[0] > 1 else 0, Cmask.stride(0) if Cmask.shape[0] > 1 else 0,
        values.stride(0),
        BLOCK_Q=BLOCK_Q, BLOCK_D=BLOCK_D, BLOCK_K=BLOCK_K, IEEE=bool(ieee and Q.dtype == torch.float32),
        num_warps=4,
    )
    return values, index.long()
