"""Short texts' passes packed into shared launches (`pack=True`, the default) vs each text alone (`pack=False`).

    PYTHONPATH=. python benchmarks/bench_packing.py [--pairs 32] [--threads 1] [--runs 3] [--device cpu]
                                                    [--cases bilrp,ij4,ij16,ijauto] [--json out.json]

`Explainer.explain_many` over --pairs STS-like short pairs (bench_dataset.py's templates, ~10 tokens each) on
MiniLM (on a machine without it, random weights of its shapes: `gpu_profile.minilm_encoder`), the two settings alternating in one process with a pinned thread count; medians of --runs. Cases:
  bilrp   BiLRP (cp, dot), mode forward (both G's of every pair made: what packing can share)
  ij4     IJ, 4 midpoint steps, mode forward
  ij16    IJ, 16 midpoint steps, mode forward
  ijauto  IJ with its defaults (steps="auto": 14-50 adaptive nodes per text; mode auto)
Prints per case: seconds packed / alone, the ratio, launches (packed runs' `packed.launches`, summed once per
pack), texts per pack, and max |ΔA| between the two settings (rounding: padded rows change the summation order).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_dataset import sts_pairs  # noqa: E402

CASES = {
    "bilrp": dict(method="bilrp", mode="forward"),
    "ij4": dict(method="ij", steps=4, mode="forward"),
    "ij16": dict(method="ij", steps=16, mode="forward"),
    "ijauto": dict(method="ij"),
}


def packs(explanations) -> tuple:
    """(launches, texts per pack) of a job: each text's plan is reported in full once (then `reused`); a pack of
    k texts gives k such plans, each with packed = {texts: k, launches: L}."""
    packed = [p["packed"] for e in explanations for p in (e.extras.get("plans") or [])
              if p and p.get("packed") and not p.get("reused")]
    n_packs = sum(1 / v["texts"] for v in packed)
    return round(sum(v["launches"] / v["texts"] for v in packed)), (len(packed) / n_packs if n_packs else 0.0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cases", default="bilrp,ij4,ij16,ijauto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import simattr
    from gpu_profile import minilm_encoder  # the bundled MiniLM, else (a device machine) random weights of its shapes
    enc, what = minilm_encoder(args.device)
    print(f"model: {what}, device {args.device}, {args.threads} thread(s)")
    ex = simattr.Explainer(enc)
    pairs = sts_pairs(args.pairs)
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    rows = []
    print("| case | pairs | packed (s) | alone (s) | alone / packed | launches (packed) | texts per pack | max abs dA |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for case in args.cases.split(","):
        opts = CASES[case]
        ex.explain_many(a[:2], b[:2], **opts)  # warm-up
        times = {True: [], False: []}
        out = {}
        for _ in range(args.runs):
            for pack in (True, False):
                t0 = time.perf_counter()
                out[pack] = list(ex.explain_many(a, b, pack=pack, **opts))
                times[pack].append(time.perf_counter() - t0)
        diff = max(float(np.abs(x.matrix - y.matrix).max()) for x, y in zip(out[True], out[False]))
        launches, per_pack = packs(out[True])
        on, off = statistics.median(times[True]), statistics.median(times[False])
        row = dict(case=case, pairs=len(pairs), packed_s=on, alone_s=off, ratio=off / on, launches=launches,
                   texts_per_pack=per_pack, max_abs_diff=diff, runs=times, threads=args.threads, device=args.device)
        rows.append(row)
        print(f"| {case} | {len(pairs)} | {on:.2f} | {off:.2f} | **{off / on:.2f}x** | {launches} | {per_pack:.1f} "
              f"| {diff:.1e} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
