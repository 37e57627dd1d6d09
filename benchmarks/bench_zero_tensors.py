"""The C++ ZeroTensor kernels (simattr.zero_tensors) on vs off: one op under vmap(jvp), then whole explanations.

    PYTHONPATH=. python benchmarks/bench_zero_tensors.py [--threads 1] [--runs 5] [--device cpu|cuda] [--out F.json]

On and off alternate in one process (round robin, `--rounds` rounds, median of `--runs` calls each, the best round
kept); the matrices must be identical. The fixed per-op cost it removes matters most where a pass is cheap: short
texts, few steps, BiLRP's single pass — and GPUs, where the arithmetic is fast and the interpreter is not.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.func import jvp, vmap  # noqa: E402

PAIRS = {
    "tiny (3+3 tokens)": ("hi", "yo"),
    "short (9+7)": ("A man is playing a guitar.", "Someone plays an instrument."),
    "sts (17+15)": ("A woman is slicing an onion on a wooden board in the kitchen.",
                    "Someone cuts a vegetable with a sharp knife."),
}
JOBS = [("ij", dict(steps=8, mode="forward"), "IJ, 8 steps"), ("ij", dict(steps=50, mode="forward"), "IJ, 50 steps"),
        ("bilrp", dict(mode="forward"), "BiLRP")]


def timed(fn, runs, sync):
    ts = []
    for _ in range(runs):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import simattr
    from simattr import zero_tensors
    if not zero_tensors.available():
        print("simattr._C with zero_tensor_kernels is not built: nothing to compare")
        return 1
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    rows = []

    # one op: x * 2.0 under vmap(jvp), 3 tangents of [4, 8]
    x, t = torch.randn(4, 8, device=dev), torch.randn(3, 4, 8, device=dev)
    op = lambda: vmap(lambda tt: jvp(lambda z: z * 2.0, (x,), (tt,)))(t)
    res = {}
    for _ in range(args.rounds):
        for on in (False, True):
            with zero_tensors.fast_kernels(on):
                op()
                s, _ = timed(lambda: [op() for _ in range(50)], args.runs, sync)
            res[on] = min(res.get(on, float("inf")), s / 50)
    rows.append({"case": "x * 2.0 under vmap(jvp)", "off_ms": res[False] * 1e3, "on_ms": res[True] * 1e3,
                 "speedup": res[False] / res[True]})
    print(f"{rows[-1]['case']:<34} off {rows[-1]['off_ms']:8.3f} ms  on {rows[-1]['on_ms']:8.3f} ms  "
          f"x{rows[-1]['speedup']:.2f}", flush=True)

    try:
        ex = simattr.Explainer(device=args.device)
    except simattr.SimattrError:  # no bundled MiniLM (a GPU machine): random weights of its shapes
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from gpu_profile import minilm_encoder
        ex = simattr.Explainer(minilm_encoder(args.device)[0])
    for pname, (a, b) in PAIRS.items():
        for method, kw, label in JOBS:
            res, mats = {}, {}
            for _ in range(args.rounds):
                for on in (False, True):
                    zero_tensors.ENABLED = on
                    ex.explain(a, b, method=method, **kw)  # warm-up
                    s, e = timed(lambda: ex.explain(a, b, method=method, **kw), args.runs, sync)
                    res[on] = min(res.get(on, float("inf")), s)
                    mats[on] = e.matrix
            zero_tensors.ENABLED = True
            diff = float(abs(mats[True] - mats[False]).max())
            rows.append({"case": f"{label}, {pname}", "off_s": res[False], "on_s": res[True],
                         "speedup": res[False] / res[True], "max_abs_diff": diff})
            print(f"{rows[-1]['case']:<34} off {res[False]:8.4f} s   on {res[True]:8.4f} s   "
                  f"x{rows[-1]['speedup']:.2f}   |diff| {diff:.1e}", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": args.device, "threads": args.threads, "torch": torch.__version__, "rows": rows},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
