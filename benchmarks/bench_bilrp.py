"""BiLRP on the engine vs the authors' per-dimension loop, side by side on MiniLM (all-MiniLM-L6-v2).

    PYTHONPATH=. python benchmarks/bench_bilrp.py [--threads 2] [--cases short,medium,long] [--bias absorb] [--json out.json]

Engine: `simattr.explain(a, b, method="bilrp", sim="dot", bias=...)` (mode auto: one JVP per token when S <= D).
--bias: the bias setting of both sides (`simattr.rules.BIASES`; default "absorb", the authors' rule set — BiLRP's
own default is "epsilon-ln", see benchmarks/bench_bilrp_rules.py).
Reference (Eberle et al.'s approach): one full forward and one modified backward per embedding dimension and
side, with the same rules (`simattr.rules.applied`), R_k = grad_k x input summed over hidden, A = Σ_k R_k(a) R_k(b)ᵀ.

Each (case, method) runs in its own subprocess so that the peak resident memory (ru_maxrss) is its own;
`baseline` is the peak after loading the model, before the computation. Engine time: median of 3 runs;
reference: 1 run (on the long pair only `--ref-dims` dimensions per side, extrapolated to D: marked).
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

CASES = {
    "short": ("A man is playing a guitar.", "Someone plays an instrument."),
    "medium": ("The committee approved the new budget after a long debate about funding for public schools, "
               "road repairs and the city library, which had been closed for most of last year because of a leaking roof.",
               "After hours of discussion, council members voted to pass a spending plan that increases money for "
               "education, infrastructure and local libraries, including the repair of the old library building downtown."),
    "long": (" ".join(["The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
                       "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
                       "produce books far faster than hand copying.",
                       "Within a few decades printing shops had spread across Europe, and the number of books in "
                       "circulation grew from thousands to millions.",
                       "Cheaper books changed education, religion and science: scholars could compare identical "
                       "copies of a text, errors could be corrected in later editions, and new ideas travelled "
                       "quickly between cities.",
                       "Historians still debate how much the press caused these changes and how much it merely "
                       "accelerated trends that were already under way, such as the growth of universities, "
                       "the rise of merchant cities and the demand for legal and commercial documents.",
                       "What is clear is that the technology spread remarkably fast, that printers were often also "
                       "publishers, editors and booksellers, and that governments and churches soon tried to "
                       "control what could be printed, through licences, censorship and lists of forbidden books.",
                       "By the end of the century, printed calendars, maps, music and even advertisements had "
                       "become ordinary objects, and reading aloud in taverns and markets brought printed news "
                       "to people who could not read themselves."]),
             " ".join(["Gutenberg's invention of printing with movable type around 1450 made it possible to copy "
                       "texts quickly and cheaply, and presses soon operated in most large European towns.",
                       "The resulting flood of pamphlets, bibles and scientific treatises helped spread literacy, "
                       "supported the Reformation and allowed researchers to build on each other's work.",
                       "Authorities reacted with censorship, but could not stop the spread of printed material.",
                       "Some scholars argue that the press only sped up developments that had already started, "
                       "while others see it as a turning point in the history of communication, comparable to "
                       "the invention of writing or, much later, of the internet.",
                       "Printed maps improved navigation, printed music spread new songs across borders, and "
                       "cheap calendars and almanacs reached farmers and artisans in the countryside.",
                       "Even people who could not read heard the news when printed sheets were read aloud in "
                       "public places, so the effects of the press reached far beyond the educated elite."])),
}


def rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20  # Linux: KiB


def per_dimension_loop(enc, text, rule="cp", sim="dot", dims=None, bias="absorb"):
    """The authors' way: for each embedding dimension k, a full forward and a modified backward."""
    import torch

    from simattr import rules
    from simattr.methods.bilrp import modified_function

    with enc.prepared(), rules.applied([enc.model, enc.head], rule, bias=bias):
        tokens = enc.tokenize(text)
        x = enc.hidden(tokens, 0)
        f = modified_function(enc, tokens, 0, sim)
        D = f(x).shape[-1]
        dims = range(D) if dims is None else dims
        R = torch.zeros(D, tokens.length, dtype=torch.float64)
        for k in dims:
            xx = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(xx)[0, k], xx)
            R[k] = (g * x).sum(-1)[0].double()
    return R


def _matrix_path(case: str) -> str:
    return os.path.join(os.environ.get("BILRP_BENCH_DIR", "."), f"engine_{case}.npy")


def worker(case: str, method: str, threads: int, ref_dims: int, bias: str = "absorb") -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    import simattr

    a, b = CASES[case]
    ex = simattr.Explainer()
    enc = ex.encoder_a
    S = (enc.tokenize(a).length, enc.tokenize(b).length)
    base = rss_mb()
    out = {"case": case, "method": method, "tokens": S, "baseline_mb": base, "threads": threads, "bias": bias}
    if method == "engine":
        times, e = [], None
        for _ in range(3):
            t = time.perf_counter()
            e = ex.explain(a, b, method="bilrp", sim="dot", bias=bias)
            times.append(time.perf_counter() - t)
        out.update(seconds=statistics.median(times), runs=times, conservation=e.extras["conservation"],
                   score=e.score, total=e.total, modes=e.settings["mode"])
        np.save(_matrix_path(case), e.matrix)  # compared with the reference's matrix in its own process
    else:
        D = 384
        dims = None if ref_dims <= 0 else list(range(min(D, ref_dims)))
        t = time.perf_counter()
        Ra = per_dimension_loop(enc, a, dims=dims, bias=bias)
        Rb = per_dimension_loop(enc, b, dims=dims, bias=bias)
        sec = time.perf_counter() - t
        out["measured_seconds"] = sec
        if dims is not None and len(dims) < D:
            out.update(seconds=sec * D / len(dims), extrapolated_from_dims=len(dims))
        else:
            A = (Ra.T @ Rb).numpy()
            out.update(seconds=sec, total=float(A.sum()))
            try:
                Ae = np.load(_matrix_path(case))
                out["max_abs_diff_vs_engine"] = float(np.abs(Ae - A).max())
            except OSError:
                pass
    out["peak_mb"] = rss_mb()
    return out


def run_case(case, method, threads, ref_dims, bias="absorb"):
    cmd = [sys.executable, __file__, "--worker", case, method, "--threads", str(threads), "--ref-dims", str(ref_dims),
           "--bias", bias]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false",
                                                                   "BILRP_BENCH_DIR": _DIR})
    if res.returncode != 0:
        raise RuntimeError(f"{case}/{method} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


_DIR = ""


def main():
    global _DIR
    import tempfile
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="short,medium,long")
    ap.add_argument("--long-ref-dims", type=int, default=24, help="reference dims per side on the long pair")
    ap.add_argument("--ref-dims", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bias", default="absorb", help="bias setting of engine and reference (simattr.rules.BIASES)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.ref_dims, args.bias)))
        return
    rows = []
    _DIR = tempfile.mkdtemp(prefix="bilrp_bench_")
    for case in args.cases.split(","):
        eng = run_case(case, "engine", args.threads, 0, args.bias)
        ref = run_case(case, "reference", args.threads, args.long_ref_dims if case == "long" else 0, args.bias)
        rows.append({"case": case, "engine": eng, "reference": ref, "speedup": ref["seconds"] / eng["seconds"]})
        r = rows[-1]
        note = f" (extrapolated from {ref['extrapolated_from_dims']} dims/side)" if "extrapolated_from_dims" in ref else ""
        print(f"{case:>6} S={eng['tokens']}: engine {eng['seconds']:.2f}s (median of 3, modes {eng['modes']}), "
              f"reference {ref['seconds']:.1f}s{note}, speed-up x{r['speedup']:.1f}; "
              f"peak RSS engine {eng['peak_mb']:.0f} MB (+{eng['peak_mb'] - eng['baseline_mb']:.0f} over the loaded "
              f"model), reference {ref['peak_mb']:.0f} MB (+{ref['peak_mb'] - ref['baseline_mb']:.0f}); "
              f"conservation sum(A)/f(a).f(b) = {eng['conservation']:.4f}"
              + (f"; max |A_engine - A_ref| = {ref['max_abs_diff_vs_engine']:.1e}" if "max_abs_diff_vs_engine" in ref else ""),
              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
