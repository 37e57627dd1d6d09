"""Fused softmax attention with its forward-mode derivative (JVP), for a batch of tangents sharing one primal.

Math
----
For one (batch, head) with queries Q [S_q, d], keys K [S_k, d], values V [S_k, d], an additive key bias M
(the padding mask, 0 or very negative) and scale c (usually d^-1/2):

    S  = c · Q Kᵀ + M,          P = softmax_row(S),          O = P V.

Its JVP along tangents (dQ, dK, dV) (the mask has no tangent):

    dS = c · (dQ Kᵀ + Q dKᵀ)
    dP = P ⊙ (dS − rowsum(P ⊙ dS))                        (JVP of the row softmax)
    dO = P dV + dP V = P dV + (P ⊙ dS) V − rowsum(P ⊙ dS) ⊙ O.

`constant_softmax=True` treats P as a constant (the CP-LRP rule): dO = P dV.

Online (flash) form
-------------------
Key tiles j are visited one after another; per query row i a running maximum m and un-normalised weights
p_j = exp(s_j − m) are kept with five running sums (all linear in p, so all rescale by α = exp(m_old − m_new)
when the maximum grows):

    l      = Σ_j p_j                 acc_pv   = Σ_j p_j v_j
    acc_pds = Σ_j p_j ds_j           acc_pdv  = Σ_j p_j dv_j          acc_pdsv = Σ_j p_j ds_j v_j

With P_j = p_j / l:   O = acc_pv / l   and

    dO = Σ P_j dv_j + Σ P_j ds_j v_j − (Σ P_j ds_j)(Σ P_j v_j)
       = (acc_pdv + acc_pdsv − (acc_pds / l) · acc_pv) / l.

When the primal statistics are known (the final m and l of the primal pass, `stats` [B, H, S_q, 2], and O),
the kernel uses p_j = exp(s_j − m) / l = P_j directly: no rescaling is needed and acc_pv is not,
dO = acc_pdv + acc_pdsv − acc_pds · O. (m and l are kept apart rather than as lse = m + log l: for a fully
masked row m ≈ finfo.min absorbs log l in fp32.)
That is the path `FusedAttention.jvp` takes: the primal kernel runs once, the tangent kernel once for all T
tangents (grid axis 2 = tangent index); the primal tiles Q, K, V are re-read from L2 by the T programs that
share them, and S = QKᵀ is recomputed per tangent (1 of the 5 tile products) instead of being stored.

Nothing of size S_q × S_k is written to global memory. Products accumulate in fp32 (`tl.dot`); bf16/fp16
inputs give bf16/fp16 outputs; fp32 inputs use 3xTF32 products on sm80+ by default (tensor cores, relative
error ~3e-6 on an H100, where IEEE FMA products were 3.6-5x slower; `fp32_precision="ieee"` forces them,
`"tf32"` is faster still at ~5e-3 error). The kernel reads any strides (HF's [B, H, S, d] views of [B, S, H, d]
projections are not copied) and writes O in the [B, S, H, d] memory layout that HF attention returns.

Masks: None, an additive float mask or a boolean/integer keep-mask (True/nonzero = attend), of shape
[B, S_k] (key padding), [B, S_q, S_k] or [B|1, H|1, S_q|1, S_k] (broadcast by stride 0, as HF's 4-D masks).
Masked scores are clamped to the float32 minimum (not −inf), like eager attention's finfo.min bias, so a
fully masked row gives the same uniform weights as eager attention instead of NaN.

Entry points (Liger style, everything in this file): `attention_forward` (O, stats) and `attention_jvp`
(O, dO for tangents [T, B, H, S, d]); `backend="triton"` runs the kernel (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1), `backend="torch"` the same math in PyTorch, `backend="auto"` the kernel on CUDA when
Triton imports and the math elsewhere. The autograd/functorch wrappers `FusedAttention` and
`AttentionTangent` and the differentiable entry `attention(q, k, v, mask, ...)` close this file;
`simattr.attention` plugs them into Hugging Face models.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

try:  # Triton is optional: without it every entry point uses the PyTorch math
    import triton
    import triton.language as tl
    HAS_TRITON = True
    try:
        from triton.runtime.errors import OutOfResources as _OUT_OF_RESOURCES
    except ImportError:  # pragma: no cover - older Triton
        _OUT_OF_RESOURCES = ()
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None
    HAS_TRITON = False
    _OUT_OF_RESOURCES = ()

#: number of launches of the tangent kernel (tests use it to check that T tangents make one launch)
LAUNCHES = {"forward": 0, "jvp": 0}

_NEG = float(torch.finfo(torch.float32).min)
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: defaults of the Triton path. fp32_precision for fp32 inputs: "auto" (3xTF32 on sm80+: tensor cores, rel. error
#: ~3e-6 on H100, 3.6x faster than "ieee"; IEEE elsewhere), "ieee" (FMA products, slow), "tf32x3", "tf32" (~5e-3).
#: "tiles": None (heuristic `_tiles`) or (BLOCK_M, BLOCK_N, num_warps, num_stages) for every launch (tuning).
DEFAULTS = {"fp32_precision": "auto", "tiles": None}
_MASK_NONE, _MASK_ADD, _MASK_BOOL = 0, 1, 2


# ====================================================================================== the kernel
if HAS_TRITON:

    @triton.jit
    def _attention_jvp_kernel(
        Q, K, V, Mask, DQ, DK, DV, O, STATS, DO,
        scale, H, SQ, SK, D,
        s_qb, s_qh, s_qm, s_qd,
        s_kb, s_kh, s_kn, s_kd,
        s_vb, s_vh, s_vn, s_vd,
        s_mb, s_mh, s_mm, s_mn,
        s_dqt, s_dqb, s_dqh, s_dqm, s_dqd,
        s_dkt, s_dkb, s_dkh, s_dkn, s_dkd,
        s_dvt, s_dvb, s_dvh, s_dvn, s_dvd,
        s_ob, s_oh, s_om, s_od,
        s_lb, s_lh, s_lm, s_l2,
        s_dot, s_dob, s_doh, s_dom, s_dod,
        MASK_KIND: tl.constexpr,
        HAS_DQ: tl.constexpr, HAS_DK: tl.constexpr, HAS_DV: tl.constexpr,
        STATS_GIVEN: tl.constexpr, WRITE_PRIMAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    ):
        """One program = one query tile (axis 0) of one (batch, head) (axis 1) for one tangent (axis 2).

        HAS_DQ/HAS_DK: the softmax term (dS) is computed (both False = constant softmax or no q/k tangent).
        HAS_DV: the P·dV term. No tangent flag set: primal only (O, stats), grid axis 2 of size 1.
        STATS_GIVEN: STATS [B, H, S_q, 2] holds the primal's row max m and row sum l, O its output;
        p = exp(s − m) / l.
        WRITE_PRIMAL: program t = 0 stores O and STATS (online mode only).
        DOT_FP32: 16-bit tiles are upcast before tl.dot (only under TRITON_INTERPRET, whose bf16 dot is wrong).
        """
        TANGENT: tl.constexpr = HAS_DQ or HAS_DK or HAS_DV
        DSOFT: tl.constexpr = HAS_DQ or HAS_DK
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        pid_t = tl.program_id(2)
        b = pid_bh // H
        h = pid_bh % H

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_ok = offs_m < SQ
        d_ok = offs_d < D
        md_ok = m_ok[:, None] & d_ok[None, :]

        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd, mask=md_ok, other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        if HAS_DQ:
            dq = tl.load(DQ + pid_t * s_dqt + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqm + offs_d[None, :] * s_dqd,
                         mask=md_ok, other=0.0)
            if DOT_FP32:
                dq = dq.to(tl.float32)

        if STATS_GIVEN:
            m_i = tl.load(STATS + b * s_lb + h * s_lh + offs_m * s_lm, mask=m_ok, other=0.0)
            inv_l_given = 1.0 / tl.load(STATS + b * s_lb + h * s_lh + offs_m * s_lm + s_l2, mask=m_ok, other=1.0)
        else:
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc_pv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_pdv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_pdsv = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        acc_pds = tl.zeros([BLOCK_M], tl.float32)

        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_vb + h * s_vh
        dk_base = DK + pid_t * s_dkt + b * s_dkb + h * s_dkh
        dv_base = DV + pid_t * s_dvt + b * s_dvb + h * s_dvh
        m_base = Mask + b * s_mb + h * s_mh

        for start_n in range(0, SK, BLOCK_N):
            n = start_n + offs_n
            n_ok = n < SK
            nd_ok = n_ok[:, None] & d_ok[None, :]
            k = tl.load(k_base + n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=nd_ok, other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            if MASK_KIND == 1:
                bias = tl.load(m_base + offs_m[:, None] * s_mm + n[None, :] * s_mn,
                               mask=m_ok[:, None] & n_ok[None, :], other=0.0)
                s = s + bias.to(tl.float32)
            if MASK_KIND == 2:
                keep = tl.load(m_base + offs_m[:, None] * s_mm + n[None, :] * s_mn,
                               mask=m_ok[:, None] & n_ok[None, :], other=1)
                s = tl.where(keep != 0, s, -3.4028234663852886e38)
            s = tl.maximum(s, -3.4028234663852886e38)  # -inf / overflowed biases -> finfo.min, as eager
            s = tl.where(n_ok[None, :], s, float("-inf"))  # keys past the end: weight exactly 0

            if STATS_GIVEN:
                p = tl.exp(s - m_i[:, None]) * inv_l_given[:, None]
            else:
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp(m_i - m_new)
                p = tl.exp(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc_pv = acc_pv * alpha[:, None]
                acc_pdv = acc_pdv * alpha[:, None]
                acc_pdsv = acc_pdsv * alpha[:, None]
                acc_pds = acc_pds * alpha
                m_i = m_new

            v = tl.load(v_base + n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=nd_ok, other=0.0)
            if DOT_FP32:
                v = v.to(tl.float32)
            if not STATS_GIVEN:
                acc_pv += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            if HAS_DV:
                dv = tl.load(dv_base + n[:, None] * s_dvn + offs_d[None, :] * s_dvd, mask=nd_ok, other=0.0)
                if DOT_FP32:
                    dv = dv.to(tl.float32)
                acc_pdv += tl.dot(p.to(dv.dtype), dv, input_precision=PRECISION)
            if DSOFT:
                ds = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                if HAS_DQ:
                    ds += tl.dot(dq, tl.trans(k), input_precision=PRECISION)
                if HAS_DK:
                    dk = tl.load(dk_base + n[:, None] * s_dkn + offs_d[None, :] * s_dkd, mask=nd_ok, other=0.0)
                    if DOT_FP32:
                        dk = dk.to(tl.float32)
                    ds += tl.dot(q, tl.trans(dk), input_precision=PRECISION)
                pds = p * (ds * scale)
                acc_pds += tl.sum(pds, 1)
                acc_pdsv += tl.dot(pds.to(v.dtype), v, input_precision=PRECISION)

        if STATS_GIVEN:
            if DSOFT:
                o = tl.load(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od,
                            mask=md_ok, other=0.0).to(tl.float32)
                d_o = acc_pdv + acc_pdsv - acc_pds[:, None] * o
            else:
                d_o = acc_pdv
        else:
            inv_l = 1.0 / l_i
            if WRITE_PRIMAL:
                if pid_t == 0:
                    o = acc_pv * inv_l[:, None]
                    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :] * s_od,
                             o.to(O.dtype.element_ty), mask=md_ok)
                    tl.store(STATS + b * s_lb + h * s_lh + offs_m * s_lm, m_i, mask=m_ok)
                    tl.store(STATS + b * s_lb + h * s_lh + offs_m * s_lm + s_l2, l_i, mask=m_ok)
            if DSOFT:
                d_o = (acc_pdv + acc_pdsv - (acc_pds * inv_l)[:, None] * acc_pv) * inv_l[:, None]
            else:
                d_o = acc_pdv * inv_l[:, None]
        if TANGENT:
            tl.store(DO + pid_t * s_dot + b * s_dob + h * s_doh + offs_m[:, None] * s_dom + offs_d[None, :] * s_dod,
                     d_o.to(DO.dtype.element_ty), mask=md_ok)


# ====================================================================================== helpers
def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def as_4d_mask(mask: Optional[Tensor], B: int, SQ: int, SK: int) -> Optional[Tensor]:
    """Any supported mask as a 4-D tensor broadcastable to [B, H, S_q, S_k] (no copy except for int masks).

    [B, S_k] → [B, 1, 1, S_k]; [B, S_q, S_k] → [B, 1, S_q, S_k]; 4-D as is. Integer masks become boolean.
    """
    if mask is None:
        return None
    if mask.dtype not in (torch.bool, torch.float32, torch.float16, torch.bfloat16, torch.float64):
        mask = mask != 0
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None, :, :]
    elif mask.dim() != 4:
        raise ValueError(f"attention mask must be 2-D, 3-D or 4-D, got shape {tuple(mask.shape)}")
    if mask.shape[-1] != SK or mask.shape[0] not in (1, B) or mask.shape[2] not in (1, SQ):
        raise ValueError(f"attention mask of shape {tuple(mask.shape)} does not broadcast to [{B}, H, {SQ}, {SK}]")
    return mask


def _mask_bias(mask: Optional[Tensor]) -> Optional[Tensor]:
    """The mask as an additive fp32 bias (math path), finfo.min where masked, as eager attention."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, _NEG)
    return mask.to(torch.float32)


def _check(q: Tensor, k: Tensor, v: Tensor):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be [B, H, S, d]")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def _use_triton(backend: str, q: Tensor) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        if not HAS_TRITON:
            raise RuntimeError("backend='triton' but Triton is not installed")
        return True
    if backend == "auto":
        return HAS_TRITON and q.is_cuda
    raise ValueError(f"unknown backend {backend!r}; choose 'auto', 'triton' or 'torch'")


def _precision(q: Tensor, requested: Optional[str]) -> str:
    """tl.dot input precision for fp32 tiles: "auto" = 3xTF32 (tensor cores, ~fp32 accuracy) on sm80+, else IEEE."""
    p = requested or DEFAULTS["fp32_precision"]
    if p != "auto":
        return p
    if q.is_cuda and torch.cuda.get_device_capability(q.device) >= (8, 0):
        return "tf32x3"
    return "ieee"


def _tiles(SQ: int, SK: int, D: int, dtype: torch.dtype, precision: str, block_m=None, block_n=None,
           num_warps=None, num_stages=None):
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) from an H100 sweep of the tangent kernel (T = 64, 12 heads):

    16-bit inputs: 64 x 32 tiles, 4 warps (8 for d = 128) were fastest or within 5 % at d = 32/64, S = 64..512.
    fp32 as 3xTF32: 128 x 32, 8 warps, 3 stages for d >= 64 and S >= 256 (2.9 ms vs 3.7-5.5 ms), else
    64 x 64, 4 warps (d = 32: 0.24 ms at S = 64, 0.72 ms at S = 256). fp32 IEEE (FMA, no tensor cores) prefers
    small 32 x 32 tiles. Tiles shrink to the sequence for short inputs (tl.dot needs >= 16).
    """
    BLOCK_D = max(16, _next_pow2(D))
    if dtype != torch.float32:
        bm, bn, w, st = (64, 32, 8 if BLOCK_D > 64 else 4, 2)
    elif precision == "ieee":
        bm, bn, w, st = (32, 32, 4, 2) if BLOCK_D <= 64 else (32, 16, 4, 2)
    elif BLOCK_D > 64:
        bm, bn, w, st = (64, 32, 8, 2)
    elif BLOCK_D == 64 and SQ >= 256:
        bm, bn, w, st = (128, 32, 8, 3)
    else:
        bm, bn, w, st = (64, 64, 4, 2)
    BLOCK_M = block_m or min(bm, max(16, _next_pow2(SQ)))
    BLOCK_N = block_n or min(bn, max(16, _next_pow2(SK)))
    return BLOCK_M, BLOCK_N, BLOCK_D, num_warps or w, num_stages or st


#: smaller configurations tried, in order, when a launch needs more shared memory than the GPU has. Shared memory
#: use depends on the Triton version: 128 x 32 / 3 stages (fp32, d = 64) fit an H100 under Triton 3.6 but need
#: 240 KiB under Triton 3.9, and fp32 d = 128 fits only 32 x 32 tiles there (tests/triton_aot.py measures it).
FALLBACK_TILES = ((64, 32, 4, 2), (64, 32, 4, 1), (32, 32, 4, 2), (32, 32, 4, 1), (32, 16, 4, 1), (16, 16, 4, 1))
#: launch-shape key -> the configuration that fitted (so a too-large one is compiled and rejected only once)
_FITTED: dict = {}


def tile_candidates(SQ: int, SK: int, D: int, dtype: torch.dtype, precision: str, block_m=None, block_n=None,
                    num_warps=None, num_stages=None) -> list:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) to try in order: the heuristic's choice (`_tiles`), then
    the smaller `FALLBACK_TILES` (clipped to the sequence). Explicit tiles are tried alone."""
    first = _tiles(SQ, SK, D, dtype, precision, block_m, block_n, num_warps, num_stages)
    if any(v is not None for v in (block_m, block_n, num_warps, num_stages)):
        return [first]
    out = [first]
    for bm, bn, w, st in FALLBACK_TILES:
        c = (min(bm, max(16, _next_pow2(SQ))), min(bn, max(16, _next_pow2(SK))), first[2], w, st)
        smaller = c[0] * c[1] * c[4] < first[0] * first[1] * first[4]
        if c not in out and smaller:
            out.append(c)
    return out


def _strides(t: Optional[Tensor], n: int):
    return tuple(t.stride()) if t is not None else (0,) * n


def _launch(q, k, v, mask, dq, dk, dv, out, stats, d_out, scale, stats_given, write_primal, T,
            fp32_precision=None, block_m=None, block_n=None, num_warps=None, num_stages=None):
    B, H, SQ, D = q.shape
    SK = k.shape[2]
    if DEFAULTS["tiles"] is not None and block_m is None and block_n is None and num_warps is None:
        block_m, block_n, num_warps, num_stages = DEFAULTS["tiles"]
    precision = _precision(q, fp32_precision) if q.dtype == torch.float32 else "tf32"  # 16-bit: unused
    candidates = tile_candidates(SQ, SK, D, q.dtype, precision, block_m, block_n, num_warps, num_stages)
    if mask is not None:
        kind = _MASK_BOOL if mask.dtype == torch.bool else _MASK_ADD
        m4 = mask.expand(B, H, SQ, SK)
        if kind == _MASK_BOOL:
            m4 = m4.view(torch.uint8)
    else:
        kind, m4 = _MASK_NONE, q
    dummy = q
    key = (q.device, q.dtype, precision, kind, dq is not None, dk is not None, dv is not None, stats_given,
           write_primal, candidates[0])  # candidates[0] holds the tiles, BLOCK_D and what S chose
    if key in _FITTED:
        candidates = [_FITTED[key]]
    for i, (BLOCK_M, BLOCK_N, BLOCK_D, warps, stages) in enumerate(candidates):
        grid = (triton.cdiv(SQ, BLOCK_M), B * H, max(1, T))
        try:
            _attention_jvp_kernel[grid](
                q, k, v, m4, dq if dq is not None else dummy, dk if dk is not None else dummy,
                dv if dv is not None else dummy, out, stats, d_out if d_out is not None else dummy,
                float(scale), H, SQ, SK, D,
                *q.stride(), *k.stride(), *v.stride(),
                *(m4.stride() if mask is not None else (0, 0, 0, 0)),
                *_strides(dq, 5), *_strides(dk, 5), *_strides(dv, 5),
                *out.stride(), *stats.stride(), *_strides(d_out, 5),
                MASK_KIND=kind, HAS_DQ=dq is not None, HAS_DK=dk is not None, HAS_DV=dv is not None,
                STATS_GIVEN=stats_given, WRITE_PRIMAL=write_primal,
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, PRECISION=precision,
                DOT_FP32=_INTERPRET and q.dtype != torch.float32,
                num_warps=warps, num_stages=stages,
            )
        except _OUT_OF_RESOURCES:  # too much shared memory for this GPU: the next, smaller configuration
            if i == len(candidates) - 1:
                raise
            continue
        _FITTED[key] = (BLOCK_M, BLOCK_N, BLOCK_D, warps, stages)
        return


def _empty_stats(q: Tensor) -> Tensor:
    return torch.empty(q.shape[0], q.shape[1], q.shape[2], 2, dtype=torch.float32, device=q.device)


def _empty_out(q: Tensor) -> Tensor:
    """[B, H, S, d] view of a [B, S, H, d] buffer: the layout HF's attention output is transposed back into."""
    B, H, S, D = q.shape
    return torch.empty(B, S, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)


# ====================================================================================== math path (reference)
def _math_probs(q, k, mask, scale):
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    bias = _mask_bias(mask)
    if bias is not None:
        s = (s + bias).clamp_min(_NEG)
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    return e / l, torch.cat([m, l], -1)


def _math_forward(q, k, v, mask, scale):
    p, stats = _math_probs(q, k, mask, scale)
    return torch.matmul(p, v.float()).to(q.dtype), stats


def _math_tangent(q, k, v, mask, scale, dq, dk, dv, constant_softmax=False):
    """dO [T, B, H, S, d] by the closed form; P is computed once for all T tangents."""
    p, _ = _math_probs(q, k, mask, scale)
    T = next(t.shape[0] for t in (dq, dk, dv) if t is not None)
    d_o = torch.zeros((T,) + q.shape, dtype=torch.float32, device=q.device)
    if dv is not None:
        d_o = d_o + torch.matmul(p, dv.float())
    if not constant_softmax and (dq is not None or dk is not None):
        ds = 0
        if dq is not None:
            ds = ds + torch.matmul(dq.float(), k.float().transpose(-1, -2))
        if dk is not None:
            ds = ds + torch.matmul(q.float(), dk.float().transpose(-1, -2))
        pds = p * (ds * scale)
        dp = pds - p * pds.sum(-1, keepdim=True)
        d_o = d_o + torch.matmul(dp, v.float())
    return d_o.to(q.dtype)


# ====================================================================================== entry points
def attention_forward(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, scale: Optional[float] = None,
                      backend: str = "auto", fp32_precision: Optional[str] = None, **tiles) -> Tuple[Tensor, Tensor]:
    """O = softmax(c·QKᵀ + M) V for q, k, v [B, H, S, d], and the softmax statistics `stats` (fp32 [B, H, S_q, 2]:
    row max m and row sum l of exp(s − m); logsumexp = m + log l)."""
    _check(q, k, v)
    B, H, SQ, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    mask = as_4d_mask(mask, B, SQ, k.shape[2])
    if not _use_triton(backend, q):
        return _math_forward(q, k, v, mask, scale)
    out = _empty_out(q)
    stats = _empty_stats(q)
    LAUNCHES["forward"] += 1
    _launch(q, k, v, mask, None, None, None, out, stats, None, scale, stats_given=False, write_primal=True, T=1,
            fp32_precision=fp32_precision, **tiles)
    return out, stats


def _common_args(q, k, v, mask, scale, dq, dk, constant_softmax):
    """Checked shapes, the scale (default d^-1/2), the mask as [B, 1|H, S_q, S_k] and, for the CP rule, no q/k
    tangents (the softmax is constant)."""
    _check(q, k, v)
    B, H, SQ, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    mask = as_4d_mask(mask, B, SQ, k.shape[2])
    if constant_softmax:
        dq = dk = None
    return scale, mask, dq, dk


def attention_tangent(q: Tensor, k: Tensor, v: Tensor, dq: Optional[Tensor], dk: Optional[Tensor],
                      dv: Optional[Tensor], mask: Optional[Tensor] = None, scale: Optional[float] = None,
                      out: Optional[Tensor] = None, stats: Optional[Tensor] = None, constant_softmax: bool = False,
                      backend: str = "auto", fp32_precision: Optional[str] = None, **tiles) -> Tensor:
    """dO [T, B, H, S_q, d] for tangents [T, B, H, S, d] (None = zero tangent), given the primal's `out` and `stats`
    from `attention_forward` (one launch for all T; both None: recomputed online by each tangent program)."""
    scale, mask, dq, dk = _common_args(q, k, v, mask, scale, dq, dk, constant_softmax)
    tans = [t for t in (dq, dk, dv) if t is not None]
    for t, ref in ((dq, q), (dk, k), (dv, v)):
        if t is not None and (t.dim() != 5 or t.shape[1:] != ref.shape):
            raise ValueError(f"tangents must be [T, *primal.shape]; got {tuple(t.shape)} for primal {tuple(ref.shape)}")
    if not tans:
        raise ValueError("attention_tangent needs at least one tangent (for constant_softmax: dv)")
    T = tans[0].shape[0]
    if any(t.shape[0] != T for t in tans):
        raise ValueError("all tangents must have the same leading tangent dimension T")
    if not _use_triton(backend, q):
        return _math_tangent(q, k, v, mask, scale, dq, dk, dv, constant_softmax)
    d_out = torch.empty((T,) + tuple(q.shape), dtype=q.dtype, device=q.device)
    if T == 0:
        return d_out
    given = out is not None and stats is not None
    if not given:
        out, stats = _empty_out(q), _empty_stats(q)  # scratch: not written (WRITE_PRIMAL=False)
    LAUNCHES["jvp"] += 1
    _launch(q, k, v, mask, dq, dk, dv, out, stats, d_out, scale, stats_given=given, write_primal=False, T=T,
            fp32_precision=fp32_precision, **tiles)
    return d_out


def attention_jvp(q: Tensor, k: Tensor, v: Tensor, dq: Optional[Tensor] = None, dk: Optional[Tensor] = None,
                  dv: Optional[Tensor] = None, mask: Optional[Tensor] = None, scale: Optional[float] = None,
                  constant_softmax: bool = False, backend: str = "auto", fp32_precision: Optional[str] = None,
                  two_pass: bool = False, **tiles) -> Tuple[Tensor, Tensor]:
    """(O [B, H, S_q, d], dO [T, B, H, S_q, d]) in ONE launch (online form; program t = 0 also writes O).

    two_pass=True runs the primal kernel first and the tangent kernel with the known stats and O (what the
    autograd Function does). Tangents are [T, B, H, S, d]; None means a zero tangent.
    """
    scale, mask, dq, dk = _common_args(q, k, v, mask, scale, dq, dk, constant_softmax)
    if two_pass or not _use_triton(backend, q) or all(t is None for t in (dq, dk, dv)):
        out, stats = attention_forward(q, k, v, mask, scale, backend=backend, fp32_precision=fp32_precision, **tiles)
        if all(t is None for t in (dq, dk, dv)):
            return out, torch.zeros((0,) + tuple(q.shape), dtype=q.dtype, device=q.device)
        return out, attention_tangent(q, k, v, dq, dk, dv, mask, scale, out, stats, constant_softmax, backend,
                                      fp32_precision, **tiles)
    T = next(t.shape[0] for t in (dq, dk, dv) if t is not None)
    out = _empty_out(q)
    stats = _empty_stats(q)
    d_out = torch.empty((T,) + tuple(q.shape), dtype=q.dtype, device=q.device)
    LAUNCHES["jvp"] += 1
    _launch(q, k, v, mask, dq, dk, dv, out, stats, d_out, scale, stats_given=False, write_primal=True, T=T,
            fp32_precision=fp32_precision, **tiles)
    return out, d_out


def attention_reference(q, k, v, mask=None, scale=None):
    """Eager attention in PyTorch (fp32 math), for tests and fallbacks: softmax(c·QKᵀ + M) V."""
    B, H, SQ, D = q.shape
    scale = D ** -0.5 if scale is None else float(scale)
    return _math_forward(q, k, v, as_4d_mask(mask, B, SQ, k.shape[2]), scale)[0]


# ====================================================================================== autograd / functorch
def _bdim_first(x: Optional[Tensor], d: Optional[int], V: int) -> Optional[Tensor]:
    """A vmap operand with its batch dimension moved to the front (expanded if the operand is unbatched)."""
    if x is None:
        return None
    return x.movedim(d, 0) if d is not None else x.expand(V, *x.shape)


def _fold_primal(V: int, dims, tensors, B: int):
    """Fold the vmapped dimension V into the batch dimension B of [B, ...] primal operands ([V*B, ...])."""
    out = []
    for x, d in zip(tensors, dims):
        if x is None:
            out.append(None)
            continue
        x = _bdim_first(x, d, V)
        x = x.expand(V, B, *x.shape[2:])  # masks may have a batch dimension of 1
        out.append(x.flatten(0, 1))
    return out


class AttentionTangent(torch.autograd.Function):
    """dO [T, B, H, S, d] for T tangents of one primal (one kernel launch), given the primal's O and stats.

    vmap rule: vmapped tangents (the engine's `vmap(jvp)` over units) are folded into T, so V·T tangents
    still make ONE launch; if the primal operands are vmapped too, V is folded into the batch dimension B.
    backward: the VJP of the closed-form math (`torch.func.vjp`), for reverse-over-forward.
    """

    generate_vmap_rule = False

    @staticmethod
    def forward(q, k, v, mask, out, stats, dq, dk, dv, scale, constant_softmax, backend):
        return attention_tangent(q, k, v, dq, dk, dv, mask, scale, out, stats, constant_softmax, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, mask, out, stats, dq, dk, dv, scale, constant_softmax, backend = inputs
        ctx.save_for_backward(q, k, v, mask, dq, dk, dv)
        ctx.scale, ctx.constant_softmax = scale, constant_softmax

    @staticmethod
    def backward(ctx, g):
        q, k, v, mask, dq, dk, dv = ctx.saved_tensors
        present = [t is not None for t in (dq, dk, dv)]
        args = [q, k, v] + [t for t in (dq, dk, dv) if t is not None]

        def fn(q_, k_, v_, *tans):
            it = iter(tans)
            full = [next(it) if p else None for p in present]
            return _math_tangent(q_, k_, v_, mask, ctx.scale, *full, constant_softmax=ctx.constant_softmax)

        _, pull = torch.func.vjp(fn, *args)
        grads = iter(pull(g))
        gq, gk, gv = next(grads), next(grads), next(grads)
        gt = [next(grads) if p else None for p in present]
        return (gq, gk, gv, None, None, None, *gt, None, None, None)

    @staticmethod
    def vmap(info, in_dims, q, k, v, mask, out, stats, dq, dk, dv, scale, constant_softmax, backend):
        V = info.batch_size
        prim_dims, tan_dims = in_dims[:6], in_dims[6:9]
        if all(d is None for d in prim_dims):  # shared primal: vmapped tangents join the tangent axis T
            tans = [None if t is None else _bdim_first(t, d, V).flatten(0, 1) for t, d in zip((dq, dk, dv), tan_dims)]
            d_out = AttentionTangent.apply(q, k, v, mask, out, stats, *tans, scale, constant_softmax, backend)
            return d_out.unflatten(0, (V, -1)), 0
        B = q.shape[0] if prim_dims[0] is None else q.movedim(prim_dims[0], 0).shape[1]
        q, k, v, mask, out, stats = _fold_primal(V, prim_dims, (q, k, v, mask, out, stats), B)
        tans = [None if t is None else _bdim_first(t, d, V).transpose(0, 1).flatten(1, 2)
                for t, d in zip((dq, dk, dv), tan_dims)]
        d_out = AttentionTangent.apply(q, k, v, mask, out, stats, *tans, scale, constant_softmax, backend)
        return d_out.unflatten(1, (V, -1)), 1


class FusedAttention(torch.autograd.Function):
    """(O, stats) = fused softmax attention, differentiable in both modes and composable with torch.func.

    forward: the primal kernel (O, stats); jvp: `AttentionTangent` (one launch for all tangents, using O and stats);
    backward: the closed-form math (recomputes P in PyTorch; reverse mode is not the fused path):
        dV = Pᵀ g,  dP = g Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ = c dS K,  dK = c dSᵀ Q
    (constant_softmax: dS = 0). vmap over the primal folds the vmapped dimension into B (one launch).
    Arguments: q, k, v [B, H, S, d], mask (see `as_4d_mask`, 4-D or None), scale, constant_softmax, backend.
    """

    generate_vmap_rule = False

    @staticmethod
    def forward(q, k, v, mask, scale, constant_softmax, backend):
        return attention_forward(q, k, v, mask, scale, backend=backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, mask, scale, constant_softmax, backend = inputs
        out, stats = output
        ctx.mark_non_differentiable(stats)
        ctx.save_for_backward(q, k, v, mask)
        ctx.save_for_forward(q, k, v, mask, out, stats)
        ctx.scale, ctx.constant_softmax, ctx.backend = scale, constant_softmax, backend

    @staticmethod
    def jvp(ctx, dq, dk, dv, dmask, *_):
        q, k, v, mask, out, stats = ctx.saved_tensors
        if ctx.constant_softmax:
            dq = dk = None
        if dq is None and dk is None and dv is None:
            return torch.zeros_like(out), None
        lift = lambda t: None if t is None else t.unsqueeze(0)
        d_out = AttentionTangent.apply(q, k, v, mask, out, stats, lift(dq), lift(dk), lift(dv), ctx.scale,
                                       ctx.constant_softmax, ctx.backend)
        return d_out.squeeze(0), None

    @staticmethod
    def backward(ctx, g_out, g_stats):
        q, k, v, mask = ctx.saved_tensors
        p, _ = _math_probs(q, k, mask, ctx.scale)
        g = g_out.float()
        gv = torch.matmul(p.transpose(-1, -2), g).to(v.dtype)
        if ctx.constant_softmax:
            return None, None, gv, None, None, None, None
        dp = torch.matmul(g, v.float().transpose(-1, -2))
        ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * ctx.scale
        gq = torch.matmul(ds, k.float()).to(q.dtype)
        gk = torch.matmul(ds.transpose(-1, -2), q.float()).to(k.dtype)
        return gq, gk, gv, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, q, k, v, mask, scale, constant_softmax, backend):
        V = info.batch_size
        B = q.shape[0] if in_dims[0] is None else q.movedim(in_dims[0], 0).shape[1]
        q, k, v, mask = _fold_primal(V, in_dims[:4], (q, k, v, mask), B)
        out, stats = FusedAttention.apply(q, k, v, mask, scale, constant_softmax, backend)
        return (out.unflatten(0, (V, -1)), stats.unflatten(0, (V, -1))), (0, 0)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None, scale: Optional[float] = None,
              constant_softmax: bool = False, backend: str = "auto") -> Tensor:
    """O [B, H, S_q, d] through `FusedAttention` (torch.func.jvp / vmap / autograd all supported)."""
    _check(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    mask = as_4d_mask(mask, q.shape[0], q.shape[2], k.shape[2])
    return FusedAttention.apply(q, k, v, mask, scale, bool(constant_softmax), backend)[0]


__all__ = ["attention", "FusedAttention", "AttentionTangent", "attention_forward", "attention_tangent",
           "attention_jvp", "attention_reference", "as_4d_mask", "tile_candidates", "HAS_TRITON", "LAUNCHES",
           "DEFAULTS", "FALLBACK_TILES"]
