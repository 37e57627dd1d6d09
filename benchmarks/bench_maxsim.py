"""Benchmark batched masked MaxSim: compiled kernel vs the PyTorch path, in one process, runs alternating.

CPU:  C++ kernel (simattr._C, OpenMP) vs PyTorch (bmm + masked max; chunked as in simattr.ops, and one unchunked bmm)
CUDA: Triton kernel (kernels/maxsim.py) vs the same PyTorch paths

    python benchmarks/bench_maxsim.py                      # 10,000 pairs of 32 x 128 tokens, dim 384, on CUDA if any
    python benchmarks/bench_maxsim.py --device cpu --runs 7 --threads 2
    python benchmarks/bench_maxsim.py --ragged             # random lengths (masks) instead of full sequences

Prints one JSON object (medians in seconds, pairs/s, effective GFLOP/s of the 2·B·Sq·Sd·D dot products) and checks
that every backend agrees with the PyTorch path (values to 1e-4; indices attain the maximum).
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

from simattr import ops  # noqa: E402


def naive(Q, C, qm, cm):
    S = torch.matmul(Q, C.transpose(1, 2))
    S = S.masked_fill(~cm[:, None, :], float("-inf"))
    v, i = S.max(-1)
    return torch.where(qm, v, 0.0), torch.where(qm, i, -1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=10_000)
    p.add_argument("--sq", type=int, default=32)
    p.add_argument("--sd", type=int, default=128)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--ragged", action="store_true", help="random lengths: masks with holes at the end")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator(device="cpu").manual_seed(0)
    Q = torch.nn.functional.normalize(torch.randn(args.pairs, args.sq, args.dim, generator=g), dim=-1).to(dev, dtype)
    C = torch.nn.functional.normalize(torch.randn(args.pairs, args.sd, args.dim, generator=g), dim=-1).to(dev, dtype)
    if args.ragged:
        lq = torch.randint(1, args.sq + 1, (args.pairs,), generator=g)
        ld = torch.randint(1, args.sd + 1, (args.pairs,), generator=g)
        qm = (torch.arange(args.sq)[None] < lq[:, None]).to(dev)
        cm = (torch.arange(args.sd)[None] < ld[:, None]).to(dev)
    else:
        qm = torch.ones(args.pairs, args.sq, dtype=torch.bool, device=dev)
        cm = torch.ones(args.pairs, args.sd, dtype=torch.bool, device=dev)

    backends = {"torch": lambda: ops.maxsim(Q, C, qm, cm, backend="torch"), "torch_unchunked": lambda: naive(Q, C, qm, cm)}
    kernel = None
    if dev.type == "cuda":
        try:
            ops.choose_maxsim_backend("cuda", dtype, "triton")
            kernel = "triton"
        except Exception as exc:  # noqa: BLE001
            print(f"triton unavailable: {exc}", file=sys.stderr)
    elif dtype == torch.float32:
        try:
            ops.choose_maxsim_backend("cpu", dtype, "cpp")
            kernel = "cpp"
        except Exception as exc:  # noqa: BLE001
            print(f"C++ kernel unavailable: {exc}", file=sys.stderr)
    if kernel:
        backends[kernel] = lambda: ops.maxsim(Q, C, qm, cm, backend=kernel)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # correctness against the chunked PyTorch path
    ref_v, ref_i = backends["torch"]()
    checks = {}
    for name, fn in backends.items():
        v, i = fn()
        sync()
        ok_v = float((v.float() - ref_v.float()).abs().max())
        same_i = float((i == ref_i).float().mean())
        # indices that differ must still attain the maximum (near-ties under different summation orders)
        diff = (i != ref_i).nonzero()
        worst = 0.0
        if len(diff):
            b, q = diff[:, 0], diff[:, 1]
            got = (Q[b, q].float() * C[b, i[b, q]].float()).sum(-1)
            worst = float((got - ref_v[b, q].float()).abs().max())
        checks[name] = {"max_abs_value_diff": ok_v, "index_agreement": same_i, "differing_index_gap": worst}
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    bad = {k: v for k, v in checks.items() if v["max_abs_value_diff"] > tol or v["differing_index_gap"] > tol}

    for fn in backends.values():  # warm-up (Triton compilation, allocator, OpenMP pool)
        fn()
    sync()
    times = {k: [] for k in backends}
    for _ in range(args.runs):
        for name, fn in backends.items():  # alternating, so drift hits every backend alike
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    flops = 2.0 * args.pairs * args.sq * args.sd * args.dim
    res = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        res[name] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "pairs_per_s": args.pairs / med,
                     "gflops": flops / med / 1e9}
    base = res["torch"]["median_s"]
    for name in res:
        res[name]["speedup_vs_torch"] = base / res[name]["median_s"]
    out = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "device_type": dev.type, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "shape": {"pairs": args.pairs, "sq": args.sq, "sd": args.sd, "dim": args.dim, "dtype": args.dtype,
                     "ragged": args.ragged},
           "runs": args.runs, "kernel": kernel, "results": res, "checks": checks, "ok": not bad}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
