"""GPU profile of the fused attention JVP (issue 5): one script, about 8 minutes on an H100, a table at the end.

    PYTHONPATH=. python benchmarks/gpu_profile.py            # full run (writes details under $OUT if set)
    PYTHONPATH=. python benchmarks/gpu_profile.py --quick    # every section on tiny sizes (~1-2 min)

Sections (each in its own try/except: a crash prints its error and the run goes on):
  a. correctness of the Triton kernel on CUDA against float64 `torch.func.jvp` of eager attention
     (fp32, bf16; S = 16..512; d = 32/64/128; ragged key padding), next to eager's own error in that dtype;
  b. attention alone: fused JVP vs eager-math JVP, `vmap(jvp)` over T = 64 tangents, B = 1..8, 12 heads,
     d = 32 (MiniLM) / 64, S = 64/256/512: median time (triton do_bench), peak memory, TFLOP/s;
  c. end to end: `Explainer.explain` IJ (steps = 50, forward mode) with fused attention on / off:
     MiniLM at 16/64/256 tokens; a random 12-layer BERT-base-sized model at 512 tokens (fewer steps,
     extrapolated, see --steps-512); pairs/s, peak GPU memory, achieved FLOP/s vs H100 peaks;
  d. torch.profiler: top 15 ops by CUDA time for one IJ explanation (MiniLM, 64 tokens), fused on and off;
  e. end to end BiLRP (CP rule), kernels on (fused constant-softmax attention + Triton contraction) vs off
     (eager rule + einsum contraction): MiniLM at 16/64/256 tokens, BERT-base-sized at 512; pairs/s, peak memory;
  m. IJ at 512 tokens (BERT-base-sized) under max_memory = 1 / 4 GiB, eager and fused: chunks, peak memory, time;
  s. short texts (16..64 tokens): IJ end to end, fused vs eager, where the fused attention starts to pay;
  f. the reverse-mode Jacobian contraction alone: einsum vs Triton (and the CUDA extension when built) at
     reverse-mode chunk shapes (benchmarks/bench_contract.py), GB/s.

The end-to-end and profiler sections switch attention with the engine's own option
(`explain(..., attention="eager" | "fused")`). Without the bundled MiniLM package (e.g. on a machine
that cannot install it) it uses a random MiniLM-shaped BERT and a synthetic word-level tokenizer: the timings
depend on the shapes only.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

import torch
from torch.func import jvp, vmap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import simattr.kernels.attention_jvp as K  # noqa: E402

PEAKS = {"fp32 (non-tensor)": 67e12, "tf32": 495e12, "bf16/fp16": 989e12}
RESULTS = {"device": None, "versions": {}, "a_correctness": [], "b_attention": [], "c_end_to_end": [],
           "d_profile": {}, "e_bilrp": [], "f_contraction": [], "errors": []}
T0 = time.time()


def log(*a):
    print(f"[{time.time() - T0:6.1f}s]", *a, flush=True)


@contextlib.contextmanager
def guarded(label):
    """Log and record an exception instead of raising it: one crash must not waste the run."""
    try:
        yield
    except Exception as exc:
        msg = f"{label} failed: {type(exc).__name__}: {exc}"
        log(msg)
        traceback.print_exc()
        RESULTS["errors"].append(msg)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def save():
    """Write what has been measured so far to $OUT/gpu_profile.json (after every section: a run killed by its
    time limit keeps its finished sections)."""
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_profile.json"), "w") as fh:
            json.dump(RESULTS, fh, indent=1, default=str)


def section(name):
    def wrap(fn):
        def run(*a, **kw):
            log(f"=== section {name}")
            with guarded(f"section {name}"):
                fn(*a, **kw)
            save()
        return run
    return wrap


def peak_mib(fn):
    if not torch.cuda.is_available():  # --cpu-smoke: plumbing only
        return fn(), float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return out, peak


# ------------------------------------------------------------------------------------------ references
def eager(q, k, v, bias, scale):
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, -1), v)


def eager_jvps(q, k, v, dq, dk, dv, bias, scale):
    f = lambda a, b, c: eager(a, b, c, bias, scale)
    return vmap(lambda x, y, z: jvp(f, (q, k, v), (x, y, z)))(dq, dk, dv)


# ------------------------------------------------------------------------------------------ a. correctness
@section("a: kernel correctness")
def correctness(args):
    sizes = (16, 64, 256) if args.quick else (16, 64, 128, 256, 512)
    dims = (32, 64) if args.quick else (32, 64, 128)
    B, H, T = 2, 4, 4
    for dtype in (torch.float32, torch.bfloat16):
        for S in sizes:
            for D in dims:
                g = torch.Generator(device="cuda").manual_seed(S * 1000 + D)
                r = lambda *s: torch.randn(*s, device="cuda", generator=g)
                q, k, v = r(B, H, S, D), r(B, H, S, D), r(B, H, S, D)
                dq, dk, dv = r(T, B, H, S, D), r(T, B, H, S, D), r(T, B, H, S, D)
                lens = torch.tensor([S, max(1, (2 * S) // 3)], device="cuda")
                keep = torch.arange(S, device="cuda")[None, :] < lens[:, None]
                bias = torch.where(keep, 0.0, torch.finfo(torch.float32).min)[:, None, None, :]
                scale = D ** -0.5
                ro, rdo = eager_jvps(*(t.double() for t in (q, k, v, dq, dk, dv)), bias.double(), scale)
                ro = ro[0]
                lo = [t.to(dtype) for t in (q, k, v, dq, dk, dv)]
                o1, do1 = K.attention_jvp(*lo, mask=keep, backend="triton")  # one launch, online softmax
                do2 = vmap(lambda a, b, c: jvp(lambda x, y, z: K.attention(x, y, z, mask=keep, backend="triton"),
                                               tuple(lo[:3]), (a, b, c))[1])(*lo[3:])
                eo, edo = eager_jvps(*lo, bias.to(dtype), scale)
                rel = lambda a, b: float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30))
                row = {"dtype": str(dtype).replace("torch.", ""), "S": S, "d": D,
                       "O_err": rel(o1, ro), "dO_err_online": rel(do1, rdo), "dO_err_function": rel(do2, rdo),
                       "eager_O_err": rel(eo[0], ro), "eager_dO_err": rel(edo, rdo)}
                tol = 1e-4 if dtype == torch.float32 else max(4e-2, 4 * row["eager_dO_err"])
                row["ok"] = bool(max(row["O_err"], row["dO_err_online"], row["dO_err_function"]) <= tol)
                RESULTS["a_correctness"].append(row)
                if not row["ok"]:
                    log("MISMATCH", row)
    bad = [r for r in RESULTS["a_correctness"] if not r["ok"]]
    log(f"correctness: {len(RESULTS['a_correctness']) - len(bad)}/{len(RESULTS['a_correctness'])} configurations ok")


# ------------------------------------------------------------------------------------------ b. attention JVP
@section("b: attention JVP, fused vs eager")
def attention_bench(args):
    from triton.testing import do_bench
    T, H = (8, 12) if args.quick else (64, 12)
    grid = []
    seqs = [int(x) for x in args.attn_seq.split(",")] if args.attn_seq else ((64, 256) if args.quick else (64, 256, 512))
    batches = [int(x) for x in args.attn_batch.split(",")] if args.attn_batch else \
        ((1, 2) if args.quick else (1, 2, 4, 8))
    for D in (32, 64):
        for S in seqs:
            for B in batches:
                grid.append((torch.float32, D, S, B))
            grid.append((torch.bfloat16, D, S, max(batches)))
    for dtype, D, S, B in grid:
        if time.time() - T0 > args.budget_s * 0.45:
            log("attention section: time budget reached, skipping the remaining configurations")
            break
        q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=dtype) for _ in range(3))
        dq, dk, dv = (torch.randn(T, B, H, S, D, device="cuda", dtype=dtype) for _ in range(3))
        scale = D ** -0.5
        impls = {"eager": lambda a, b, c: eager(a, b, c, None, scale),
                 "fused": lambda a, b, c: K.attention(a, b, c, backend="triton")}
        if dtype == torch.float32:
            impls["fused_tf32"] = impls["fused"]
        flops = B * H * S * S * D * (4 + 8 * T)  # useful FLOPs: primal QKᵀ, PV; per tangent 4 products
        row = {"dtype": str(dtype).replace("torch.", ""), "d": D, "S": S, "B": B, "T": T, "H": H}
        for name, f in impls.items():
            fn = lambda f=f: vmap(lambda a, b, c: jvp(f, (q, k, v), (a, b, c))[1])(dq, dk, dv)
            K.DEFAULTS["fp32_precision"] = "tf32" if name == "fused_tf32" else "auto"
            try:
                _, mem = peak_mib(fn)
                ms = do_bench(fn, warmup=10, rep=60 if not args.quick else 20, return_mode="median")
                row[f"{name}_ms"], row[f"{name}_MiB"], row[f"{name}_TFLOPs"] = ms, mem, flops / ms / 1e9
            except torch.cuda.OutOfMemoryError:
                row[f"{name}_ms"] = row[f"{name}_MiB"] = row[f"{name}_TFLOPs"] = float("nan")
                row[f"{name}_note"] = "OOM"
                torch.cuda.empty_cache()
            finally:
                K.DEFAULTS["fp32_precision"] = "auto"
        if row.get("eager_ms") and row.get("fused_ms"):
            row["speedup"] = row["eager_ms"] / row["fused_ms"]
        RESULTS["b_attention"].append(row)
        log({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})
        del q, k, v, dq, dk, dv


# ------------------------------------------------------------------------------------------ c. end to end
def synthetic_tokenizer(vocab_size=30522):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(special)}
    vocab.update({f"w{i}": i + len(special) for i in range(vocab_size - len(special))})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def minilm_encoder(device="cuda"):
    """(Encoder on `device`, description): the bundled MiniLM, else a random model of its shapes."""
    import simattr
    try:
        ex = simattr.Explainer(device=device)
        return ex.encoder_a, "all-MiniLM-L6-v2 (bundled)"
    except Exception as exc:
        log(f"bundled MiniLM unavailable ({type(exc).__name__}: {exc}); using random weights of its shapes")
    from transformers import AutoModel, BertConfig
    tok = synthetic_tokenizer()
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModel.from_config(cfg, attn_implementation="eager").eval().to(device)
    return simattr.Encoder(model, tok, pooling="mean", max_length=256, name="random MiniLM-shaped"), \
        "random MiniLM-shaped BERT (synthetic tokenizer)"


def bert_base_encoder(tokenizer, device="cuda"):
    import simattr
    from transformers import AutoModel, BertConfig
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512)
    torch.manual_seed(0)
    model = AutoModel.from_config(cfg, attn_implementation="eager").eval().to(device)
    return simattr.Encoder(model, tokenizer, pooling="mean", name="random BERT-base")


def text_of(tokenizer, n, seed):
    """A text that tokenizes to exactly n tokens (special tokens included), from single-token words."""
    import random
    rnd = random.Random(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalnum() and len(w) >= 3 and w.isascii() and w.islower()]
    words.sort()
    picked = []
    while True:
        picked.append(rnd.choice(words))
        m = len(tokenizer(" ".join(picked))["input_ids"])
        if m >= n:
            while m > n:
                picked.pop()
                m = len(tokenizer(" ".join(picked))["input_ids"])
            return " ".join(picked)


def model_flops(model, S):
    cfg = model.config
    H, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return L * (2 * S * (4 * H * H + 2 * H * I) + 4 * S * S * H)


@section("c: end to end")
def end_to_end(args):
    import simattr
    enc, desc = minilm_encoder()
    RESULTS["c_model"] = desc
    sizes = [int(x) for x in args.e2e_tokens.split(",")] if args.e2e_tokens else \
        ([16, 64] + ([512] if args.with_512 else []) if args.quick else [16, 64, 256, 512])
    configs = [("bert-base", n, args.steps_512) if n > 256 else (enc, n, args.steps) for n in sizes]
    for enc_i, n, steps in configs:
        if time.time() - T0 > args.budget_s * 0.7:  # leave room for sections e and f
            log("end-to-end section: time budget reached, skipping the rest")
            break
        with guarded(f"end-to-end {n} tokens"):
            if enc_i == "bert-base":
                enc_i = bert_base_encoder(enc.tokenizer)
            ex = simattr.Explainer(enc_i)
            a, b = text_of(enc_i.tokenizer, n, 1), text_of(enc_i.tokenizer, n, 2)
            kw = dict(steps=steps, mode="forward")  # equal lengths: per-side forward mode
            row = {"model": enc_i.name, "tokens": n, "steps": steps}
            mats = {}
            for name in ("eager", "fused"):
                kw["attention"] = name  # the engine switches attention itself (auto = fused on CUDA)
                # warm-up with the measured call itself: Triton specialises on integer arguments (strides,
                # sizes divisible by 16), so a different node batch can compile a new variant
                ex.explain(a, b, **kw)
                reps = 1 if n >= 256 else (3 if n >= 64 else 5)
                t, peak = time.perf_counter(), 0.0
                for _ in range(reps):
                    e, pk = peak_mib(lambda: ex.explain(a, b, **kw))
                    peak = max(peak, pk)
                sec = (time.perf_counter() - t) / reps
                mats[name] = e.matrix
                U = e.matrix.shape
                # per node: one primal forward + one tangent pass (about a forward's FLOPs) per unit
                flops = (U[0] + U[1] + 2) * steps * model_flops(enc_i.model, n)
                row.update({f"{name}_s_per_pair": sec, f"{name}_pairs_per_s": 1 / sec, f"{name}_peak_MiB": peak,
                            f"{name}_TFLOPs": flops / sec / 1e12, "units": list(U), "mode": e.settings["mode"]})
            row["speedup"] = row["eager_s_per_pair"] / row["fused_s_per_pair"]
            row["max_abs_diff_fused_vs_eager"] = float(abs(mats["fused"] - mats["eager"]).max())
            row["fp32_peak_fraction_fused"] = row["fused_TFLOPs"] * 1e12 / PEAKS["fp32 (non-tensor)"]
            if steps != 50:
                for name in ("eager", "fused"):
                    row[f"{name}_pairs_per_s_at_50_steps"] = row[f"{name}_pairs_per_s"] * steps / 50
            RESULTS["c_end_to_end"].append(row)
            log({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


# ------------------------------------------------------------------------------------------ m. memory budget
@section("m: 512 tokens under a fixed memory budget")
def memory_budget(args):
    """IJ on the BERT-base-sized model at 512 + 512 tokens with `max_memory` = 1 and 4 GiB, eager and fused: the
    planner's chunks, the peak GPU memory above what was allocated before the call, and seconds per pair."""
    import simattr
    enc, _ = minilm_encoder()
    big = bert_base_encoder(enc.tokenizer)
    ex = simattr.Explainer(big)
    a, b = text_of(big.tokenizer, 512, 7), text_of(big.tokenizer, 512, 8)
    RESULTS["m_memory"] = []
    for budget in ("1GB", "4GB"):
        for name in ("eager", "fused"):
            kw = dict(steps=1, mode="forward", attention=name, max_memory=budget)
            ex.explain(a, b, **kw)  # warm-up (Triton compiles for these chunk shapes)
            t = time.perf_counter()
            e, peak = peak_mib(lambda: ex.explain(a, b, **kw))
            sec = time.perf_counter() - t
            plan = e.extras["plans"][0]
            row = {"model": big.name, "tokens": 512, "max_memory": budget, "attention": name, "peak_MiB": peak,
                   "s_per_pair_per_step": sec, "unit_chunk": plan.get("unit_chunk"),
                   "node_chunk": plan.get("node_chunk"), "budget_MiB": plan.get("budget_bytes", 0) / 2 ** 20}
            RESULTS["m_memory"].append(row)
            log({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})


# ------------------------------------------------------------------------------------------ s. short texts
@section("s: short texts, fused vs eager")
def short_texts(args):
    """Where the fused attention starts to pay end to end: IJ (steps = 50) at 16..64 tokens, 5 runs each."""
    import simattr
    enc, _ = minilm_encoder()
    ex = simattr.Explainer(enc)
    RESULTS["s_short"] = []
    for n in (16, 24, 32, 48, 64):
        a, b = text_of(enc.tokenizer, n, 11), text_of(enc.tokenizer, n, 12)
        row = {"tokens": n}
        for name in ("eager", "fused", "eager", "fused"):  # alternate: two rounds, the better kept
            kw = dict(steps=50, mode="forward", attention=name)
            ex.explain(a, b, **kw)
            t = time.perf_counter()
            for _ in range(5):
                ex.explain(a, b, **kw)
            sec = (time.perf_counter() - t) / 5
            row[f"{name}_s_per_pair"] = min(sec, row.get(f"{name}_s_per_pair", float("inf")))
        row["speedup"] = row["eager_s_per_pair"] / row["fused_s_per_pair"]
        RESULTS["s_short"].append(row)
        log({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


# ------------------------------------------------------------------------------------------ e. BiLRP end to end
@section("e: BiLRP end to end")
def bilrp_end_to_end(args):
    import simattr
    enc, desc = minilm_encoder(args.device)
    RESULTS["e_model"] = desc
    sizes = [int(x) for x in args.e2e_tokens.split(",")] if args.e2e_tokens else \
        ([16, 64] if args.quick else [16, 64, 256, 512])
    kernel = "triton" if args.device == "cuda" else "torch"
    settings = {"off": dict(attention="eager", contraction="torch"),
                "on": dict(attention="fused", contraction=kernel)}
    # units <= D: forward mode (the attention kernel matters); one forced reverse-mode row (the contraction matters)
    configs = [(n, "auto") for n in sizes] + [(16 if args.quick else 256, "reverse")]
    for n, mode in configs:
        if time.time() - T0 > args.budget_s * 0.95:
            log("BiLRP section: time budget reached, skipping the rest")
            break
        with guarded(f"BiLRP {n} tokens"):
            enc_i = bert_base_encoder(enc.tokenizer, args.device) if n > 256 else enc
            ex = simattr.Explainer(enc_i)
            a, b = text_of(enc_i.tokenizer, n, 5), text_of(enc_i.tokenizer, n, 6)
            row = {"model": "BERT-base-sized" if n > 256 else "MiniLM", "tokens": n}
            mats = {}
            for name, kw in settings.items():
                kw = dict(kw, mode=mode)
                ex.explain(a, b, method="bilrp", **kw)  # warm-up (Triton compiles)
                reps = 1 if n >= 256 else 3
                t, peak = time.perf_counter(), 0.0
                for _ in range(reps):
                    e, pk = peak_mib(lambda: ex.explain(a, b, method="bilrp", **kw))
                    peak = max(peak, pk)
                sec = (time.perf_counter() - t) / reps
                mats[name] = e.matrix
                row.update({f"{name}_s_per_pair": sec, f"{name}_pairs_per_s": 1 / sec, f"{name}_peak_MiB": peak,
                            "mode": e.settings["mode"], f"{name}_attention": e.settings["attention"],
                            f"{name}_contraction": [p["contraction"] for p in e.extras["plans"]]})
            row["speedup"] = row["off_s_per_pair"] / row["on_s_per_pair"]
            row["max_abs_diff"] = float(abs(mats["on"] - mats["off"]).max())
            RESULTS["e_bilrp"].append(row)
            log({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})


# ------------------------------------------------------------------------------------------ f. contraction op
@section("f: Jacobian contraction")
def contraction_bench(args):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_contract
    if args.quick:
        bench_contract.SHAPES = bench_contract.SHAPES[:2]
    rows = bench_contract.bench_op(torch.device(args.device), torch.float32, 3 if args.quick else 7)
    RESULTS["f_contraction"] = rows
    for r in rows:
        log(r)


# ------------------------------------------------------------------------------------------ d. profiler
@section("d: torch.profiler")
def profile(args):
    import simattr
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    enc, _ = minilm_encoder()
    ex = simattr.Explainer(enc)
    a, b = text_of(enc.tokenizer, 64, 3), text_of(enc.tokenizer, 64, 4)
    steps = 10 if args.quick else 50
    for name in ("fused", "eager"):
        kw = dict(steps=steps, mode="forward", attention=name)
        ex.explain(a, b, **kw)  # warm-up = the profiled call (no compile inside)
        with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ex.explain(a, b, **kw)
            torch.cuda.synchronize()
        avg = prof.key_averages()
        for key in ("cuda_time_total", "device_time_total", "self_cuda_time_total"):
            try:
                table = avg.table(sort_by=key, row_limit=15)
                break
            except Exception:
                table = None
        table = table or avg.table(row_limit=15)
        ranges = [f"  {e.key:<24} calls {e.count:>5}  cpu {e.cpu_time_total / 1e3:9.2f} ms  device "
                  f"{getattr(e, 'device_time_total', getattr(e, 'cuda_time_total', 0)) / 1e3:9.2f} ms"
                  for e in avg if e.key.startswith("simattr::")]
        table += "\nsimattr's named ranges (simattr.engine.named):\n" + "\n".join(ranges)
        RESULTS["d_profile"][name] = table
        print(f"--- top 15 ops by CUDA time, IJ explanation (64 + 64 tokens, steps={steps}), attention {name}")
        print(table)
        out = os.environ.get("OUT")
        if out:
            with open(os.path.join(out, f"profile_{name}.txt"), "w") as fh:
                fh.write(table)


# ------------------------------------------------------------------------------------------ t. tile sweep
@section("t: tile sweep of the tangent kernel")
def tile_sweep(args):
    """The hot kernel alone (tangents with known primal stats), per tile configuration and fp32 precision."""
    from triton.testing import do_bench
    T, H = (16, 12) if args.quick else (64, 12)
    shapes = [(64, 512, 1), (32, 256, 2), (32, 64, 8)] if not args.quick else [(64, 256, 1), (32, 64, 2)]
    configs = [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2),
               (128, 32, 8, 3), (16, 32, 2, 2)]
    precisions = [("float32", "ieee"), ("float32", "tf32x3"), ("float32", "tf32"), ("bfloat16", None)]
    RESULTS["t_sweep"] = []
    t_start = time.time()
    for D, S, B in shapes:
        g = torch.Generator(device="cuda").manual_seed(D + S)
        base = [torch.randn(B, H, S, D, device="cuda", generator=g) for _ in range(3)]
        tans = [torch.randn(T, B, H, S, D, device="cuda", generator=g) for _ in range(3)]
        scale = D ** -0.5
        ref = K._math_tangent(*(t.double() for t in base), None, scale, *(t.double() for t in tans))
        ef = lambda a, b, c: eager(a, b, c, None, scale)
        for dtype_name, prec in precisions:
            dtype = getattr(torch, dtype_name)
            q, k, v = (t.to(dtype) for t in base)
            dq, dk, dv = (t.to(dtype) for t in tans)
            eager_ms = do_bench(lambda: vmap(lambda a, b, c: jvp(ef, (q, k, v), (a, b, c))[1])(dq, dk, dv),
                                warmup=5, rep=30, return_mode="median")
            out, stats = K.attention_forward(q, k, v, None, scale, backend="triton")
            for bm, bn, w, st in configs:
                if time.time() - t_start > args.sweep_budget_s:
                    log("tile sweep: budget reached")
                    return
                fn = lambda: K.attention_tangent(q, k, v, dq, dk, dv, None, scale, out, stats, False, "triton", prec,
                                                 block_m=bm, block_n=bn, num_warps=w, num_stages=st)
                try:
                    err = float((fn().double() - ref).abs().max() / ref.abs().max())
                    ms = do_bench(fn, warmup=5, rep=30, return_mode="median")
                except Exception as exc:
                    err, ms = float("nan"), float("nan")
                    log(f"config {bm}x{bn} w{w} s{st} {dtype_name}/{prec} failed: {type(exc).__name__}: {exc}")
                row = {"d": D, "S": S, "B": B, "T": T, "dtype": dtype_name, "precision": prec, "block_m": bm,
                       "block_n": bn, "warps": w, "stages": st, "ms": ms, "rel_err": err,
                       "eager_vmap_jvp_ms": eager_ms,
                       "TFLOPs_executed": B * H * T * 10 * S * S * D / ms / 1e9 if ms == ms else float("nan")}
                RESULTS["t_sweep"].append(row)
                log(f"d={D} S={S} B={B} {dtype_name}/{prec} {bm}x{bn} w{w} s{st}: {ms:.3f} ms "
                    f"(eager vmap-jvp incl. primal {eager_ms:.3f} ms) err {err:.1e} "
                    f"{row['TFLOPs_executed']:.1f} TFLOP/s")


# ------------------------------------------------------------------------------------------ summary
def summary():
    print("\n================ SUMMARY ================")
    print(f"device: {RESULTS['device']}  versions: {RESULTS['versions']}")
    rows = RESULTS["a_correctness"]
    if rows:
        bad = [r for r in rows if not r["ok"]]
        worst = lambda dt, key: max((r[key] for r in rows if r["dtype"] == dt), default=float("nan"))
        print(f"(a) correctness: {len(rows) - len(bad)}/{len(rows)} ok; worst rel. error "
              f"fp32 O {worst('float32', 'O_err'):.1e} dO {worst('float32', 'dO_err_function'):.1e} | "
              f"bf16 O {worst('bfloat16', 'O_err'):.1e} dO {worst('bfloat16', 'dO_err_function'):.1e} "
              f"(eager bf16 dO {worst('bfloat16', 'eager_dO_err'):.1e})")
        for r in bad:
            print("    MISMATCH", r)
    if RESULTS["b_attention"]:
        print("(b) attention vmap(jvp), T tangents: median ms | peak MiB | useful TFLOP/s (fused fp32 = 3xTF32, tf32 = plain TF32)")
        print(f"    {'dtype':8} {'d':>3} {'S':>4} {'B':>2} | {'eager ms':>9} {'fused ms':>9} {'tf32 ms':>8} "
              f"{'speedup':>7} | {'eager MiB':>9} {'fused MiB':>9} | {'fused TF/s':>10}")
        for r in RESULTS["b_attention"]:
            f = lambda k: r.get(k, float("nan"))
            print(f"    {r['dtype']:8} {r['d']:>3} {r['S']:>4} {r['B']:>2} | {f('eager_ms'):9.3f} {f('fused_ms'):9.3f} "
                  f"{f('fused_tf32_ms'):8.3f} {f('speedup'):7.2f} | {f('eager_MiB'):9.0f} {f('fused_MiB'):9.0f} | "
                  f"{f('fused_TFLOPs'):10.1f}")
    if RESULTS["c_end_to_end"]:
        print(f"(c) end to end IJ ({RESULTS.get('c_model')}), forward mode; FLOP/s vs H100 fp32 67 / tf32 495 / bf16 989 TF/s")
        print(f"    {'model':22} {'tok':>4} {'steps':>5} | {'eager pair/s':>12} {'fused pair/s':>12} {'speedup':>7} | "
              f"{'eager MiB':>9} {'fused MiB':>9} | {'eager TF/s':>10} {'fused TF/s':>10} | {'|diff|':>8}")
        for r in RESULTS["c_end_to_end"]:
            print(f"    {r['model'][:22]:22} {r['tokens']:>4} {r['steps']:>5} | {r['eager_pairs_per_s']:12.3f} "
                  f"{r['fused_pairs_per_s']:12.3f} {r['speedup']:7.2f} | {r['eager_peak_MiB']:9.0f} "
                  f"{r['fused_peak_MiB']:9.0f} | {r['eager_TFLOPs']:10.1f} {r['fused_TFLOPs']:10.1f} | "
                  f"{r['max_abs_diff_fused_vs_eager']:8.1e}")
    if RESULTS.get("t_sweep"):
        print("(t) tile sweep, best configuration per shape and precision (tangent kernel alone):")
        best = {}
        for r in RESULTS["t_sweep"]:
            key = (r["d"], r["S"], r["B"], r["dtype"], r["precision"])
            if r["ms"] == r["ms"] and (key not in best or r["ms"] < best[key]["ms"]):
                best[key] = r
        for key, r in best.items():
            print(f"    d={key[0]:>3} S={key[1]:>4} B={key[2]} {key[3]:8} {str(key[4]):6}: {r['block_m']}x{r['block_n']} "
                  f"w{r['warps']} s{r['stages']} {r['ms']:.3f} ms err {r['rel_err']:.1e} "
                  f"({r['TFLOPs_executed']:.1f} TF/s; eager vmap-jvp {r['eager_vmap_jvp_ms']:.3f} ms)")
    if RESULTS["e_bilrp"]:
        print("(e) end to end BiLRP (CP): kernels off (eager rule, einsum) vs on (fused attention, kernel contraction)")
        print(f"    {'model':22} {'tok':>4} {'mode':>18} | {'off pair/s':>10} {'on pair/s':>10} {'speedup':>7} | "
              f"{'off MiB':>8} {'on MiB':>8} | {'|diff|':>8}")
        for r in RESULTS["e_bilrp"]:
            print(f"    {r['model'][:22]:22} {r['tokens']:>4} {str(r['mode']):>18} | {r['off_pairs_per_s']:10.3f} "
                  f"{r['on_pairs_per_s']:10.3f} {r['speedup']:7.2f} | {r['off_peak_MiB']:8.0f} {r['on_peak_MiB']:8.0f} | "
                  f"{r['max_abs_diff']:8.1e}")
    if RESULTS["f_contraction"]:
        print("(f) Jacobian contraction [K, N, S, H] -> [K, U]: ms (GB/s of grads read), speedup vs einsum")
        for r in RESULTS["f_contraction"]:
            parts = [f"{b} {r[b]['ms']:.3f} ms ({r[b]['GB_s']:.0f} GB/s, x{r[b]['speedup_vs_torch']:.2f}"
                     f"{'' if r[b]['ok'] else ' MISMATCH'})" for b in ("torch", "triton", "cuda", "cpp") if b in r]
            print(f"    {r['K']:>4} {r['N']:>2} {r['S']:>4} {r['H']:>4}: " + " | ".join(parts))
        for b in ("triton", "cuda"):
            rows = [r for r in RESULTS["f_contraction"] if b in r]
            if rows:
                wins = all(r[b]["ok"] and r[b]["speedup_vs_torch"] > 1.05 for r in rows)
                print(f"    -> {b}: {'faster at every shape: set' if wins else 'not faster everywhere: keep'} "
                      f"simattr.backends.AUTO['contraction']['cuda'] = {repr(b) if wins else None}")
    if RESULTS.get("m_memory"):
        print("(m) IJ at 512 tokens under max_memory: attention, tangents per chunk, peak MiB, s per pair per step")
        for r in RESULTS["m_memory"]:
            print(f"    {r['max_memory']:>5} {r['attention']:>6} {r['unit_chunk']:>4} {r['peak_MiB']:9.0f} "
                  f"{r['s_per_pair_per_step']:8.3f}")
    if RESULTS.get("s_short"):
        print("(s) short texts, IJ 50 steps, s per pair eager / fused (speedup): " + ", ".join(
            f"{r['tokens']}: {r['eager_s_per_pair']:.3f}/{r['fused_s_per_pair']:.3f} ({r['speedup']:.2f})"
            for r in RESULTS["s_short"]))
    if RESULTS["d_profile"]:
        print("(d) profiler tables printed above" + (" and written under $OUT" if os.environ.get("OUT") else ""))
    for e in RESULTS["errors"]:
        print("ERROR:", e)
    print(f"total wall time {time.time() - T0:.0f}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that every section runs")
    ap.add_argument("--sections", default="abcdef", help="which sections to run (default abcdef; t = tile sweep)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: run sections e and f on the CPU at tiny sizes (checks the script's plumbing only)")
    ap.add_argument("--steps", type=int, default=50, help="IJ steps for the MiniLM runs")
    ap.add_argument("--steps-512", type=int, default=5,
                    help="IJ steps for the 512-token BERT-base run (pairs/s is also given scaled to 50 steps)")
    ap.add_argument("--with-512", action="store_true", help="run the 512-token case in --quick mode too")
    ap.add_argument("--apply-best", action="store_true",
                    help="after section t, use the fastest fp32 configuration (error <= 1e-5) and rerun section c")
    ap.add_argument("--e2e-tokens", default=None, help="comma-separated token counts for section c (default 16,64,256,512)")
    ap.add_argument("--attn-seq", default=None, help="comma-separated sequence lengths for section b (default 64,256,512)")
    ap.add_argument("--attn-batch", default=None, help="comma-separated batch sizes for section b (default 1,2,4,8)")
    ap.add_argument("--sweep-budget-s", type=float, default=200, help="wall-time limit of the tile sweep (section t)")
    ap.add_argument("--budget-s", type=float, default=450, help="soft wall-time budget; later configs are skipped")
    args = ap.parse_args()
    if args.quick:
        args.steps = min(args.steps, 4)
        args.steps_512 = min(args.steps_512, 1)
    args.device = "cuda"
    if not torch.cuda.is_available():
        if not args.cpu_smoke:
            print("no CUDA device: this script profiles the GPU path only (--cpu-smoke checks sections e, f)")
            return 1
        args.device, args.quick = "cpu", True
        args.sections = "".join(c for c in args.sections if c in "ef")
    import transformers
    RESULTS["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu (smoke test)"
    RESULTS["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "triton": getattr(K.triton, "__version__", None)}
    log(RESULTS["device"], RESULTS["versions"])
    torch.manual_seed(0)
    sections = {"a": correctness, "b": attention_bench, "c": end_to_end, "d": profile, "e": bilrp_end_to_end,
                "f": contraction_bench, "m": memory_budget, "s": short_texts}
    for key, run_section in sections.items():  # in this order, whatever the order of --sections
        if key in args.sections:
            run_section(args)
    if "t" in args.sections:
        tile_sweep(args)
        if args.apply_best and RESULTS.get("t_sweep"):
            ok = [r for r in RESULTS["t_sweep"] if r["dtype"] == "float32" and r["rel_err"] <= 1e-5
                  and r["ms"] == r["ms"] and r["d"] == 64]
            if ok:
                r = min(ok, key=lambda r: r["ms"])
                K.DEFAULTS["fp32_precision"] = r["precision"]
                K.DEFAULTS["tiles"] = (r["block_m"], r["block_n"], r["warps"], r["stages"])
                log(f"applying the best fp32 configuration: {r['precision']} {K.DEFAULTS['tiles']}")
                RESULTS["applied"] = {"fp32_precision": r["precision"], "tiles": K.DEFAULTS["tiles"]}
                end_to_end(args)
    summary()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
