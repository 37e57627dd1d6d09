"""Benchmark the reverse-mode Jacobian contraction: kernels vs the einsum reference, in one process, runs alternating.

    out[k, unit[s]] += Σ_n w[n] Σ_h grads[k, n, s, h] · tangent[s, h]

CPU:  C++ kernel (simattr._C, OpenMP, vectorised) vs torch (einsum + index_add, simattr.contraction.contract_torch)
CUDA: Triton kernel (kernels/contract.py) and, when built, the CUDA kernel (csrc/cuda) vs the same torch path

    python benchmarks/bench_contract.py                         # the op at reverse-mode chunk shapes
    python benchmarks/bench_contract.py --device cpu --threads 1 --runs 7
    python benchmarks/bench_contract.py --end-to-end            # also IJ reverse mode on MiniLM, torch vs auto

Prints one JSON object: medians in ms, effective GB/s (bytes of `grads` read once), the ratio to torch, and a
check that every backend agrees with torch (1e-4 relative). --end-to-end adds the share of a reverse-mode IJ run
spent in the contraction (the VJPs dominate on the CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from simattr import contraction  # noqa: E402

#: (K cotangents, N nodes, S tokens, H hidden) of reverse-mode chunks: MiniLM-sized (H=384) and BERT-base (768)
SHAPES = [(384, 1, 16, 384), (64, 2, 128, 384), (384, 1, 64, 384), (128, 4, 256, 384), (32, 2, 512, 768),
          (16, 8, 32, 384)]


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_op(fn, dev, runs):
    fn()
    _sync(dev)
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t)
    return out


def backends_for(dev):
    names = ["torch"]
    for b in (["cpp"] if dev.type == "cpu" else ["triton", "cuda"]):
        try:
            contraction.choose_backend(dev.type, b)
            names.append(b)
        except Exception as exc:  # noqa: BLE001 - report why a backend is absent
            print(f"# {b}: {exc}", file=sys.stderr)
    return names


def bench_op(dev, dtype, runs):
    rows = []
    names = backends_for(dev)
    for K, N, S, H in SHAPES:
        g = torch.Generator().manual_seed(0)
        grads = torch.randn(K, N, S, H, generator=g).to(dev, dtype)
        tangent = torch.randn(S, H, generator=g).to(dev)
        w = torch.rand(N, generator=g).to(dev)
        unit = (torch.arange(S) // 2).to(dev)  # two tokens per unit
        U = (S + 1) // 2
        ref = contraction.contract(grads, tangent, w, unit, U, backend="torch")
        times = {b: [] for b in names}
        for _ in range(runs):  # alternate backends run by run
            for b in names:
                times[b] += time_op(lambda: contraction.contract(grads, tangent, w, unit, U, backend=b), dev, 1)
        row = {"K": K, "N": N, "S": S, "H": H, "grads_MB": grads.numel() * grads.element_size() / 1e6}
        for b in names:
            med = statistics.median(times[b])
            out = contraction.contract(grads, tangent, w, unit, U, backend=b)
            err = float((out.double() - ref.double()).abs().max() / ref.double().abs().max())
            row[b] = {"ms": med * 1e3, "GB_s": grads.numel() * grads.element_size() / med / 1e9,
                      "speedup_vs_torch": statistics.median(times["torch"]) / med, "max_rel_err": err,
                      "ok": err < 1e-4 if dtype == torch.float32 else err < 2e-2}
        rows.append(row)
    return rows


def bench_end_to_end(runs):
    """IJ in reverse mode on MiniLM (one pair, 4 steps): contraction torch vs auto, alternating."""
    import simattr
    ex = simattr.Explainer()
    a = "A man is playing a guitar on the stage while the audience sings along."
    b = "Someone performs music for a crowd of people at a concert tonight."
    opts = dict(method="ij", mode="reverse", steps=4)
    auto = contraction.choose_backend("cpu")
    times = {"torch": [], auto: []}
    mats = {}
    for _ in range(runs):
        for name in times:
            t = time.perf_counter()
            e = ex.explain(a, b, contraction=name, **opts)
            times[name].append(time.perf_counter() - t)
            mats[name] = e.matrix
    # time spent in the contraction itself, by wrapping it
    spent = {"s": 0.0, "calls": 0}
    orig = contraction.contract

    def wrapped(*args, **kw):
        t = time.perf_counter()
        out = orig(*args, **kw)
        spent["s"] += time.perf_counter() - t
        spent["calls"] += 1
        return out
    contraction.contract = wrapped
    try:
        t = time.perf_counter()
        ex.explain(a, b, contraction="torch", **opts)
        total_torch = time.perf_counter() - t
        in_torch = spent["s"]
    finally:
        contraction.contract = orig
    return {"pair_tokens": [len(ex.encoder_a.tokenize(a).tokens), len(ex.encoder_a.tokenize(b).tokens)],
            "steps": 4, "seconds": {k: statistics.median(v) for k, v in times.items()},
            "max_abs_diff": float(abs(mats["torch"] - mats[auto]).max()),
            "contraction_share_with_torch": in_torch / total_torch}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--end-to-end", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    res = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "dtype": args.dtype, "runs": args.runs,
           "op": bench_op(dev, getattr(torch, args.dtype), args.runs)}
    if args.end_to_end:
        res["end_to_end"] = bench_end_to_end(max(1, args.runs // 2))
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
