"""Integrated Jacobians: the engine vs the per-dimension backward loop, side by side, same inputs.

Each case runs in its own process (so its peak memory is its own): the engine `repeats` times, then the
reference loop (one backward pass per embedding dimension, as the reference code does) `ref_repeats` times,
alternating. Prints the speed ratio of medians, peak memory and the completeness error.

    python benchmarks/bench_ij.py                       # short, medium, long on the CPU, 50 steps
    python benchmarks/bench_ij.py --device cuda --cases short,medium,long,512
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TEXTS = {
    "short": ("A man plays guitar.", "Someone plays music."),
    "medium": ("The city council approved the new annual budget late on Tuesday evening after a long and heated "
               "debate about funding for public schools, local roads, city parks and the aging water system.",
               "After many hours of discussion, the members of the city council finally passed a spending plan that "
               "increases the money available for education, infrastructure repairs, parks and other public services."),
}
_LONG_A = ("The history of the city begins with a small settlement on the river, where traders exchanged grain, "
           "salt and cloth. ")
_LONG_B = ("Over several centuries the market town grew into a regional centre of commerce and learning, "
           "with guilds, schools and a busy port. ")


def long_texts(encoder, target: int):
    n = lambda text: len(encoder.tokenizer(text)["input_ids"])
    out = []
    for unit in (_LONG_A, _LONG_B):
        words = (unit * (target // 10 + 2)).split()
        lo, hi = 1, len(words)
        while lo < hi:  # the longest prefix of whole words within `target` tokens
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if n(" ".join(words[:mid])) <= target else (lo, mid - 1)
        out.append(" ".join(words[:lo]))
    return tuple(out)


def peak_bytes(device: str) -> int:
    import torch
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def forward_flops(cfg, S: int) -> float:
    """FLOPs of one encoder forward over S tokens (matmuls and attention)."""
    H = getattr(cfg, "hidden_size", 384)
    I = getattr(cfg, "intermediate_size", 4 * H)
    L = getattr(cfg, "num_hidden_layers", 6)
    return L * (2 * S * (4 * H * H + 2 * H * I) + 4 * S * S * H)


def worker(case: str, args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    import simattr
    from simattr import engine, quadrature
    from simattr.methods.ij import prepare_side
    from tests.reference_loop import per_dimension_loop

    dtype = getattr(torch, args.dtype)
    if case == "512":  # a BERT-base-sized random model: MiniLM stops at 256 tokens
        from transformers import AutoTokenizer, BertConfig, AutoModel
        cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        torch.manual_seed(0)
        model = AutoModel.from_config(cfg, attn_implementation="eager")
        tok = AutoTokenizer.from_pretrained(str(simattr.encoders.default_model_path()))
        enc = simattr.load_encoder(simattr.Encoder(model, tok, pooling="mean", name="bert-base-random"),
                                   device=args.device, dtype=dtype)
    elif args.random_init:  # same shapes as the model at --model, random weights (timing only)
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        path = args.model or str(simattr.encoders.default_model_path())
        torch.manual_seed(0)
        model = AutoModel.from_config(AutoConfig.from_pretrained(path), attn_implementation="eager")
        enc = simattr.load_encoder(simattr.Encoder(model, AutoTokenizer.from_pretrained(path), pooling="mean",
                                                   normalized=True, max_length=256, name="random-" + path),
                                   device=args.device, dtype=dtype)
    else:
        enc = simattr.load_encoder(args.model, device=args.device, dtype=dtype)
    if case == "querydoc":  # a short query against a ~120-token document: cross mode vs per-side forward mode
        a = TEXTS["short"][0]
        b = long_texts(enc, 120)[1]
    elif case in TEXTS:
        a, b = TEXTS[case]
    else:
        a, b = long_texts(enc, 250 if case == "long" else int(case))
    ex = simattr.Explainer(enc)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if case not in TEXTS and case != "querydoc":
        args.steps = args.long_steps
    out = {"case": case, "device": args.device, "threads": args.threads, "steps": args.steps}
    if args.device.startswith("cuda"):
        out["card"] = torch.cuda.get_device_name(0)
        torch.cuda.reset_peak_memory_stats()
    base = peak_bytes(args.device)
    run_ref = args.ref_repeats > 0 and case in args.ref_cases.split(",")
    eng_t, ref_t, e = [], [], None
    for i in range(max(args.repeats, args.ref_repeats if run_ref else 0)):
        if i < args.repeats:
            sync(); t = time.perf_counter()
            e = ex.explain(a, b, steps=args.steps, units=args.units)
            sync(); eng_t.append(time.perf_counter() - t)
            if i == 0:
                out["engine_peak_bytes"] = peak_bytes(args.device)
        if case == "querydoc" and i < args.repeats:
            sync(); t = time.perf_counter()
            ex.explain(a, b, steps=args.steps, units=args.units, mode="forward")
            sync(); out.setdefault("per_side_forward_runs", []).append(time.perf_counter() - t)
        if run_ref and i < args.ref_repeats:
            sync(); t = time.perf_counter()
            with enc.prepared():
                al, w = quadrature.nodes("riemann_midpoint", args.steps)
                for text in (a, b):
                    # the reference code runs the model as loaded: parameters keep requires_grad
                    for p in enc.model.parameters():
                        p.requires_grad_(True)
                    side = prepare_side(enc, text, 0, None, "token", True, False)
                    per_dimension_loop(side.f, side.x, side.r, al, w)
            sync(); ref_t.append(time.perf_counter() - t)
    S = (len(e.tokens_a), len(e.tokens_b))
    units = e.extras["plans"]
    out.update({"tokens": S, "modes": e.settings["mode"], "error": e.error, "score": e.score,
                "engine_s": statistics.median(eng_t), "engine_runs": eng_t, "baseline_bytes": base,
                "plans": units})
    cfg = enc.model.config
    # per node: one primal forward + one tangent pass (about a forward's FLOPs) per non-special unit
    flops = sum(args.steps * ((s - 2) + 1) * forward_flops(cfg, s) for s in S)
    out["engine_gflops"] = flops / out["engine_s"] / 1e9
    if "per_side_forward_runs" in out:
        out["per_side_forward_s"] = statistics.median(out["per_side_forward_runs"])
        out["cross_speedup"] = out["per_side_forward_s"] / out["engine_s"]
    if ref_t:
        out["reference_s"] = statistics.median(ref_t)
        out["reference_runs"] = ref_t
        out["speedup"] = out["reference_s"] / out["engine_s"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="short,medium,long")
    ap.add_argument("--ref-cases", default="short,medium", help="cases that also run the per-dimension loop")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--long-steps", type=int, default=8, help="steps for the long cases (engine only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--units", default="token")
    ap.add_argument("--model", default=None, help="model path (default: bundled MiniLM)")
    ap.add_argument("--random-init", action="store_true", help="random weights with the shapes of --model")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--json", default=None, help="write all results to this file")
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return
    results = []
    for case in args.cases.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", case] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("worker", "json", "cases", "random_init", "model") and v is not None]
        cmd += (["--random-init"] if args.random_init else []) + ([f"--model={args.model}"] if args.model else [])
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            print(f"{case}: failed\n{p.stderr[-3000:]}")
            continue
        r = json.loads(line[0][7:])
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("plans", "engine_runs", "reference_runs")}))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(f"\n{'case':>7} {'tokens':>9} {'mode':>8} {'engine s':>9} {'loop s':>8} {'ratio':>7} {'peak MiB':>9} "
          f"{'GFLOP/s':>8} {'error':>9}")
    for r in results:
        ref = f"{r['reference_s']:.1f}" if "reference_s" in r else "-"
        ratio = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        print(f"{r['case']:>7} {str(tuple(r['tokens'])):>9} {r['modes'][0]:>8} {r['engine_s']:9.2f} {ref:>8} "
              f"{ratio:>7} {r['engine_peak_bytes'] / 2**20:9.0f} {r['engine_gflops']:8.1f} {r['error']:9.2e}")


if __name__ == "__main__":
    main()
