"""The attribution engine: G[k, u] = Σ_n w_n ⟨∂f_k(x_n)/∂x, T_u⟩ by forward or reverse mode, chunked to a budget.

    x_n = r + α_n (x − r),  T_u = (x − r) restricted to the tokens of unit u          (IJ)
    x_1 = x, w = 1,         T_u = x restricted to the tokens of unit u                 (BiLRP, `delta=x`)

Forward mode: one JVP per unit (tangents batched with vmap; the primal is computed once per node chunk and
shared by all tangents). Reverse mode: one VJP per output dimension (one-hot cotangents, scaled by w_n,
batched with vmap), each gradient block [k, n, S, H] contracted with Δ on the fly; the D × S × H Jacobian
is never stored. The planner picks the mode with fewer passes, and the chunk sizes from a byte budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.func import jvp, vjp, vmap

from . import contraction
from .errors import SimattrError, check_finite

MODES = ("auto", "forward", "reverse")
#: pair-level modes (simattr/jobs.py): "cross" = forward mode on the side with fewer units, then VJPs on the other
#: side with that side's G columns as cotangents: A directly, 2·min(U_a, U_b) passes instead of U_a + U_b
PAIR_MODES = MODES + ("cross",)
#: on the CPU, tokens (tangents x nodes x sequence length) per forward-mode chunk: larger batches only spill the
#: caches (MiniLM, 28 tokens, 1 thread: 11.2 s at ~100 sequences per chunk vs 14.4 s with all 560 at once and
#: 19.6 s at 13; 7 tokens: 2.0 s with all 250 at once vs 3.0 s at 50)
CPU_FORWARD_TOKENS = 4096
#: on the CPU, tokens per launch that packed short texts fill (`pack_capacity`): the cost per sequence stops
#: falling there (MiniLM, 10 tokens, 1 thread, 8 tangents per primal: 33 / 11.6 / 8.5 / 6.2 / 4.7 ms per sequence at
#: 4 / 8 / 16 / 32 / 64 sequences per launch, 4.4-5.1 ms from 64 to 400), so a larger pack only adds padding
CPU_PACK_TOKENS = 1024


@dataclass
class Shape:
    """What the memory model needs to know of the encoder and the input."""

    seq: int
    hidden: int
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    out_dim: int = 384
    bytes: int = 4
    fused_attention: bool = False  # no S x S probabilities (or their tangents) in memory

    @classmethod
    def of(cls, encoder, seq: int, hidden: int, out_dim: int, dtype: torch.dtype):
        cfg = getattr(getattr(encoder, "model", None), "config", None)
        get = lambda *names, default: next((getattr(cfg, n) for n in names if cfg is not None and getattr(cfg, n, None)), default)
        return cls(seq=seq, hidden=hidden, layers=max(1, get("num_hidden_layers", "n_layers", default=len(getattr(encoder, "blocks", [0])))),
                   heads=get("num_attention_heads", "n_heads", default=max(1, hidden // 64)),
                   intermediate=get("intermediate_size", "hidden_dim", default=4 * hidden),
                   out_dim=out_dim, bytes=torch.finfo(dtype).bits // 8)

    def layer_bytes(self) -> int:
        """Live bytes of one sequence through one block: attention scores/probabilities, FFN and hidden states."""
        S = self.seq
        attn = 0 if self.fused_attention else 4 * self.heads * S * S
        return self.bytes * (attn + 4 * S * self.intermediate + 10 * S * max(self.hidden, 64))

    def forward_element(self) -> int:
        """Peak bytes per (tangent, node) pair in forward mode (primal + tangent of about one block live)."""
        return 2 * self.layer_bytes()

    def reverse_saved(self) -> int:
        """Bytes saved for the backward pass per path node (all blocks)."""
        return self.layers * self.layer_bytes()

    def reverse_element(self) -> int:
        """Transient bytes per (cotangent, node) pair during a batched VJP."""
        return 2 * self.layer_bytes()


@dataclass
class Plan:
    mode: str
    unit_chunk: int
    node_chunk: int
    budget_bytes: int
    estimated_bytes: int
    reason: str
    skipped_units: int = 0
    #: reverse mode: the Jacobian-contraction backend requested (simattr.contraction: "auto", "torch", "cpp",
    #: "triton", "cuda"); after the run, the one that ran (None in forward mode, which has no contraction)
    contraction: Optional[str] = "auto"
    #: times the chunks were halved after running out of memory (`path_attribution`)
    memory_retries: int = 0

    def as_dict(self):
        return dict(self.__dict__)


def default_budget(device: torch.device) -> int:
    """Working-memory budget: 2 GiB on the CPU, 40 % of the free memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    return 2 << 30


def parse_memory(value) -> Optional[int]:
    """max_memory as bytes: a positive finite number of bytes, or a string like '4GB', '512MiB', '1e9' (None: the
    device's default). Anything else — zero, negative, inf, NaN, a bool — is a SimattrError."""
    if value is None:
        return None
    how = "a positive byte count or a string like '4GB'"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SimattrError(f"max_memory must be {how}, got {value!r}")
    number, scale = value, 1
    if isinstance(value, str):
        v = value.strip().upper().replace("IB", "").replace("B", "")
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        if v and v[-1] in units:
            v, scale = v[:-1], units[v[-1]]
        try:
            number = float(v)
        except ValueError:
            raise SimattrError(f"max_memory must be {how}, got {value!r}") from None
    if not math.isfinite(float(number)) or not math.isfinite(float(number) * scale) or number * scale < 1:
        raise SimattrError(f"max_memory must be {how}, got {value!r}")
    return int(number * scale)


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def plan(n_units: int, n_nodes: int, shape: Shape, mode: str = "auto", budget: Optional[int] = None,
         batch_size: Optional[int] = None, device=torch.device("cpu"), allow_forward: bool = True,
         contraction: str = "auto", budget_given: bool = False) -> Plan:
    """Choose forward or reverse mode (fewer passes: units vs output dimensions) and chunk sizes for a budget.
    contraction: the reverse-mode contraction backend to request (`simattr.contraction`). budget_given: the budget
    is the caller's max_memory, so a text whose smallest chunk (one tangent at one node) does not fit is refused
    rather than run over it."""
    if mode not in MODES:
        raise SimattrError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise SimattrError(f"internal_batch_size must be a positive integer, got {batch_size!r}")
    budget = budget or default_budget(torch.device(device))
    D = shape.out_dim
    if mode == "auto":
        if not allow_forward:
            mode, reason = "reverse", "forward mode is not exact for this function"
        elif n_units <= D:
            mode, reason = "forward", f"{n_units} unit JVPs <= {D} output-dimension VJPs"
        else:
            mode, reason = "reverse", f"{D} output-dimension VJPs < {n_units} unit JVPs"
    else:
        reason = "forced by the caller"
    if mode == "forward":
        per = shape.forward_element()
        elems = batch_size or _forward_sequences(shape, budget, device, CPU_FORWARD_TOKENS)
        u_c = max(1, min(n_units, elems))
        n_c = max(1, min(n_nodes, elems // u_c))
        est = u_c * n_c * per
    else:
        saved, per = shape.reverse_saved(), shape.reverse_element()
        if batch_size:
            n_c = max(1, min(n_nodes, batch_size))
            u_c = max(1, min(D, batch_size // n_c))
        else:
            n_c = max(1, min(n_nodes, (budget // 2) // max(saved, 1)))
            u_c = max(1, min(D, (budget - n_c * saved) // max(n_c * per, 1)))
        est = n_c * saved + u_c * n_c * per
    smallest = shape.forward_element() if mode == "forward" else shape.reverse_saved() + shape.reverse_element()
    if budget_given and batch_size is None and smallest > budget:
        raise SimattrError(f"max_memory={format_bytes(budget)} cannot hold one {mode}-mode chunk of this "
                           f"{shape.seq}-token text (one tangent at one path node needs about "
                           f"{format_bytes(smallest)}): give at least that, or leave max_memory unset")
    return Plan(mode=mode, unit_chunk=int(u_c), node_chunk=int(n_c), budget_bytes=int(budget),
                estimated_bytes=int(est), reason=reason, contraction=contraction)


def named(name: str):
    """A named range for `torch.profiler` traces (and NVTX under `emit_nvtx`): `simattr::<name>`."""
    return torch.profiler.record_function(f"simattr::{name}")


def active_units(unit_matrix: Tensor, tangent: Tensor) -> list:
    """Indices of the units whose tangent is not zero (special tokens under the pad reference at layer 0 have
    none: their G columns are exactly zero and need no pass)."""
    per_token = tangent[0].abs().sum(-1)  # [S]
    return torch.nonzero(unit_matrix.to(per_token.device, per_token.dtype) @ per_token > 0).flatten().tolist()


def _batched_jvp(f: Callable, xs: Tensor, tangents: Tensor) -> Tensor:
    """JVPs of f at the primal batch xs [n, S, H] for a stack of tangents [u, n, S, H] -> [u, n, D]."""
    return vmap(lambda t: jvp(f, (xs,), (t,))[1])(tangents)


def forward_mode(f: Callable, start: Tensor, delta: Tensor, alphas: Tensor, weights: Tensor, unit_matrix: Tensor,
                 out_dim: int, p: Plan, tangent: Optional[Tensor] = None) -> Tensor:
    """G [D, U] by one JVP per unit: Σ_n w_n J(start + α_n delta) · (tangent ⊙ unit_u)."""
    tangent = delta if tangent is None else tangent
    U, S = unit_matrix.shape
    acc = torch.float64 if start.dtype == torch.float64 else torch.float32
    G = torch.zeros(out_dim, U, dtype=acc, device=start.device)
    um = unit_matrix.to(start.device, start.dtype)
    active = active_units(um, tangent)
    p.skipped_units = U - len(active)
    p.contraction = None
    with torch.no_grad():
        for n0 in range(0, len(alphas), p.node_chunk):
            a = alphas[n0:n0 + p.node_chunk].to(start.dtype)
            w = weights[n0:n0 + p.node_chunk].to(acc)
            xs = start + a.view(-1, 1, 1) * delta  # [n, S, H]
            for u0 in range(0, len(active), p.unit_chunk):
                idx = active[u0:u0 + p.unit_chunk]
                t = um[idx].unsqueeze(-1) * tangent  # [u, S, H]
                t = t.unsqueeze(1).expand(-1, xs.shape[0], -1, -1)
                with named("jvp_chunk"):
                    out = _batched_jvp(f, xs, t)  # [u, n, D]
                G[:, idx] += torch.einsum("und,n->du", out.to(acc), w)
    return G


def reverse_mode(f: Callable, start: Tensor, delta: Tensor, alphas: Tensor, weights: Tensor, unit_matrix: Tensor,
                 out_dim: int, p: Plan, tangent: Optional[Tensor] = None, cotangents: Optional[Tensor] = None) -> Tensor:
    """G [D, U] by one VJP per output dimension, contracted with the tangent per token, pooled into units.

    Each chunk of gradients [k, n, S, H] is reduced by `simattr.contraction.contract` (node weights, features and
    the tokens of each unit in one pass; backend `p.contraction`) and dropped.
    cotangents [K, D] (default: the identity, one-hot e_k) gives instead [K, U] = cotangentsᵀ-weighted rows:
    row j is Σ_n w_n ⟨J(x_n)ᵀ c_j, tangent|_u⟩ = (c_jᵀ G)[u] — with c_j the columns of the other side's G this is
    the token matrix itself, without this side's G (cross mode).
    """
    tangent = delta if tangent is None else tangent
    acc = torch.float64 if start.dtype == torch.float64 else torch.float32
    D = out_dim
    K = D if cotangents is None else cotangents.shape[0]
    um = unit_matrix.to(start.device)
    idx = contraction.unit_index(um)  # units pooled inside the contraction; else token columns, pooled at the end
    pooled = idx is not None
    n_out = um.shape[0] if pooled else start.shape[1]
    if not pooled:
        idx = torch.arange(start.shape[1], device=start.device)
    backend = p.contraction or "auto"
    p.contraction = contraction.choose_backend(start.device.type, backend)
    Gs = torch.zeros(K, n_out, dtype=acc, device=start.device)
    t0 = tangent[0]
    for n0 in range(0, len(alphas), p.node_chunk):
        a = alphas[n0:n0 + p.node_chunk].to(start.dtype)
        w = weights[n0:n0 + p.node_chunk].to(acc)
        xs = (start + a.view(-1, 1, 1) * delta).detach()
        with torch.enable_grad():
            with named("vjp_primal"):
                _, pullback = vjp(f, xs)
            n = xs.shape[0]
            for k0 in range(0, K, p.unit_chunk):
                k1 = min(K, k0 + p.unit_chunk)
                if cotangents is None:
                    ks = torch.arange(k0, k1, device=start.device)
                    ct = torch.zeros(k1 - k0, n, D, dtype=start.dtype, device=start.device)
                    ct[torch.arange(k1 - k0), :, ks] = 1  # one-hot e_k at every node
                else:
                    ct = cotangents[k0:k1].to(start.dtype).unsqueeze(1).expand(-1, n, -1)  # [k, n, D]
                with named("vjp_chunk"):
                    (grads,) = vmap(pullback)(ct)  # [k, n, S, H]
                with named("contract"):
                    Gs[k0:k1] += contraction.contract(grads, t0, w, idx, n_out, backend=p.contraction).to(acc)
                del grads
        del pullback
    return Gs if pooled else Gs @ um.to(Gs.dtype).T


def pack_capacity(shape: Shape, budget: int, device) -> int:
    """Forward-mode sequences (tangent x node pairs of `shape`'s length) one launch of packed texts takes: what
    the budget holds, and on the CPU at most `CPU_PACK_TOKENS` tokens (past them a launch is no cheaper per
    sequence); on a GPU the budget's (a launch of short texts is far from filling it)."""
    return _forward_sequences(shape, budget, device, CPU_PACK_TOKENS)


def _forward_sequences(shape: Shape, budget: int, device, cpu_tokens: int) -> int:
    """(tangent, node) sequences of `shape` the budget holds in forward mode, on the CPU at most cpu_tokens tokens."""
    elems = max(1, budget // shape.forward_element())
    if torch.device(device).type == "cpu":
        elems = min(elems, max(1, cpu_tokens // shape.seq))
    return int(elems)


def forward_mode_packed(F: Callable, paths: list, unit_matrices: list, out_dim: int, capacity: int) -> tuple:
    """The G's [D, U_t] of several texts in shared launches: rows (text t, node n) of one padded batch, tangent
    slot u of a row the u-th active unit of its text (zero where the text has fewer), F(x, rows) the texts' f
    over the batch (`Encoder.packed_function`). `paths`: per text (start, delta, alphas, weights, tangent) with
    start, delta, tangent [1, S_t, H]; `capacity`: sequences (slots x rows) per launch.

    Row n of text t sees x = start_t + α_n delta_t padded with zeros to the longest text, whose padded positions
    the mask takes out of attention and pooling: each G equals the text's own `forward_mode` up to rounding —
    unless a padded position goes non-finite (a query row with every key masked, as in a sliding window far
    past the text's end: its NaN reaches the real rows as 0·NaN), which is a NumericalError here; the caller
    then makes each text alone. Returns (G's, {launches, slots, rows: the most rows of one launch})."""
    S = max(p[0].shape[1] for p in paths)
    dtype, device = paths[0][0].dtype, paths[0][0].device
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, S - t.shape[1]))
    actives, texts, xs, ws, Gs, unit_tangents = [], [], [], [], [], []
    for t, ((start, delta, alphas, weights, tangent), um) in enumerate(zip(paths, unit_matrices)):
        tangent = delta if tangent is None else tangent
        um = um.to(device, dtype)
        actives.append(active_units(um, tangent))
        a = torch.as_tensor(alphas, dtype=torch.float64).to(device, dtype)
        xs.append(pad(start + a.view(-1, 1, 1) * delta))
        ws.append(torch.as_tensor(weights, dtype=torch.float64).to(device, acc))
        texts.append(torch.full((len(a),), t, dtype=torch.long, device=device))
        unit_tangents.append(pad(um[actives[-1]].unsqueeze(-1) * tangent))  # [u_t, S, H]
        Gs.append(torch.zeros(out_dim, um.shape[0], dtype=acc, device=device))
    slots = max(1, max(len(a) for a in actives))
    x_all, rows_all, w_all = torch.cat(xs), torch.cat(texts), torch.cat(ws)
    per_launch = max(1, capacity // slots)
    launches, most_rows = 0, 0
    with torch.no_grad():
        for r0 in range(0, len(rows_all), per_launch):
            rows = rows_all[r0:r0 + per_launch]
            T = x_all.new_zeros(slots, len(rows), S, x_all.shape[-1])
            texts_here = [(t, (rows == t).nonzero().flatten()) for t in rows.unique().tolist()]
            for t, sel in texts_here:
                T[:len(actives[t]), sel] = unit_tangents[t].unsqueeze(1)
            with named("jvp_packed"):
                out = _batched_jvp(lambda x: F(x, rows), x_all[r0:r0 + per_launch], T)  # [slots, n, D]
            launches, most_rows = launches + 1, max(most_rows, len(rows))
            w = w_all[r0:r0 + per_launch]
            for t, sel in texts_here:
                idx = actives[t]
                Gs[t][:, idx] += torch.einsum("und,n->du", out[:len(idx), sel].to(acc), w[sel])
    for G in Gs:
        check_finite(G, "the attribution (G)")
    return Gs, {"launches": launches, "slots": slots, "rows": most_rows}


def out_of_memory(exc: BaseException) -> bool:
    """An allocation failure: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def path_attribution(f: Callable, start: Tensor, delta: Tensor, alphas, weights, unit_matrix: Tensor, out_dim: int,
                     p: Plan, tangent: Optional[Tensor] = None, cotangents: Optional[Tensor] = None) -> Tensor:
    """Dispatch to forward or reverse mode. start, delta: [1, S, H]; alphas, weights: 1-D.
    `cotangents` [K, D] (reverse mode only) contracts with given rows instead of the one-hot e_k: [K, U].

    Out of memory inside a chunk: the chunks are halved (tangents first, then nodes; `p.memory_retries`, and
    `p.reason` says so) and the attribution is run again from the start; with chunks of one tangent at one node it
    is a SimattrError."""
    if p.mode == "forward" and cotangents is not None:
        raise ValueError("cotangents need reverse mode")
    alphas = torch.as_tensor(alphas, dtype=torch.float64).to(start.device)
    weights = torch.as_tensor(weights, dtype=torch.float64).to(start.device)
    run = forward_mode if p.mode == "forward" else reverse_mode
    extra = () if p.mode == "forward" else (cotangents,)
    while True:
        try:
            G = run(f, start, delta, alphas, weights, unit_matrix, out_dim, p, tangent, *extra)
            break
        except Exception as exc:  # noqa: BLE001  (only allocation failures are handled)
            if not out_of_memory(exc):
                raise
            if start.device.type == "cuda":
                torch.cuda.empty_cache()
            if p.unit_chunk == 1 and p.node_chunk == 1:
                raise SimattrError(f"out of memory on {start.device} with chunks of one tangent at one path node "
                                   f"({start.shape[1]} tokens): use a shorter text (max_length), a smaller dtype "
                                   f"or another device") from None
            if p.unit_chunk > 1:
                p.unit_chunk = max(1, p.unit_chunk // 2)
            else:
                p.node_chunk = max(1, p.node_chunk // 2)
            p.memory_retries += 1
            p.reason += f"; out of memory: chunks halved to {p.unit_chunk} tangents x {p.node_chunk} nodes"
    check_finite(G, "the attribution (G)")
    return G


def full_tangent_values(f: Callable, start: Tensor, delta: Tensor, alphas, shape: Shape, budget: int) -> Tensor:
    """J(start + α_n delta) · delta for every node [n, D] — the integrand whose integral is f(x) − f(r); one JVP per
    node, nodes batched to the budget (the adaptive rule's probe: `simattr.quadrature.AdaptiveRule`)."""
    alphas = torch.as_tensor(alphas, dtype=torch.float64)
    n_c = max(1, min(len(alphas), budget // shape.forward_element()))
    if start.device.type == "cpu":
        n_c = min(n_c, max(1, CPU_FORWARD_TOKENS // shape.seq))
    out = []
    with torch.no_grad():
        for n0 in range(0, len(alphas), n_c):
            a = alphas[n0:n0 + n_c].to(start.device, start.dtype)
            xs = start + a.view(-1, 1, 1) * delta
            with named("full_tangent"):
                out.append(jvp(f, (xs,), (delta.expand_as(xs),))[1])
    values = torch.cat(out)
    check_finite(values, "the full-tangent integrand")
    return values


def full_tangent_integral(f: Callable, start: Tensor, delta: Tensor, alphas, weights, shape: Shape,
                          budget: int) -> Tensor:
    """Σ_n w_n J(start + α_n delta) · delta — one JVP per node; equals f(x) − f(r) up to quadrature error."""
    acc = torch.float64 if start.dtype == torch.float64 else torch.float32
    values = full_tangent_values(f, start, delta, alphas, shape, budget).to(acc)
    w = torch.as_tensor(weights, dtype=torch.float64).to(start.device, acc)
    return torch.einsum("nd,n->d", values, w)
