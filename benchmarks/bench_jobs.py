"""Many pairs: `Explainer.explain_many` (each text's G at most once, `simattr.jobs`) vs `explain` pair by pair.

    PYTHONPATH=. python benchmarks/bench_jobs.py [--threads 1] [--steps 16] [--runs 3] [--json out.json]

Jobs on MiniLM (all-MiniLM-L6-v2), IJ (midpoint, --steps) and BiLRP (cp, dot):
  query-docs  one query against 8 documents (the query's G once; each document by its own G or by cross passes)
  grid        4 queries x 8 documents, all pairs (every text once, or cross passes where cheaper)
  aligned     8 (a, b) pairs, line by line: 4 queries twice each against 8 distinct documents
Both ways run in one process, alternately, with a pinned thread count; figures are medians of --runs; results are
checked equal (max |ΔA|).

    PYTHONPATH=. python benchmarks/bench_jobs.py --zero-columns [--steps 20]

times one cross pass of a 7-token query (5 active units) on a 120-token document with all the query's G columns
as cotangents (zero columns of [CLS]/[SEP] included, as before the runner dropped them) vs the active ones only.

    PYTHONPATH=. python benchmarks/bench_jobs.py --cache [--steps 16]

times one query explained against the 8 documents one `explain` call at a time, with `Explainer(cache_size=16)`
(the query's G made once, then taken from the cache) vs without a cache, alternating.

    PYTHONPATH=. python benchmarks/bench_jobs.py --bilrp-modes [--cases short,medium]

times single-pair BiLRP (bench_bilrp.py's pairs, cp, dot) in mode auto (now cross mode for unequal lengths) vs
mode forward (per-side JVPs: what auto did before BiLRP had cross mode), alternating.
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

QUERIES = ["how do plants make food", "cheap flights to rome", "symptoms of the flu", "who painted the mona lisa"]
DOCS = [
    "Plants use sunlight, water and carbon dioxide to produce glucose and oxygen in a process called photosynthesis.",
    "Budget airlines offer low fares to Italian cities, especially when tickets are booked several weeks ahead.",
    "Influenza usually causes fever, a sore throat, muscle aches and tiredness that can last for about a week.",
    "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century; it hangs in the Louvre in Paris.",
    "The chlorophyll in leaves absorbs light, mostly red and blue, and reflects green.",
    "Rome's two airports are served by frequent trains and buses to the city centre.",
    "Getting a flu vaccine every autumn lowers the risk of a severe infection.",
    "The portrait is famous for the subject's faint smile and the soft blending of its colours.",
]


def jobs():
    return {"query-docs": (QUERIES[0], DOCS, False), "grid": (QUERIES, DOCS, True),
            "aligned": (QUERIES + QUERIES, DOCS, False)}


def pair_list(a, b, all_pairs):
    a = [a] if isinstance(a, str) else a
    if all_pairs:
        return [(x, y) for x in a for y in b]
    return [(a[0 if len(a) == 1 else k], y) for k, y in enumerate(b)]


def run(ex, job, method, opts):
    a, b, all_pairs = job
    t = time.perf_counter()
    many = ex.explain_many(a, b, method=method, all_pairs=all_pairs, **opts)
    t_many = time.perf_counter() - t
    flat = [e for row in many for e in row] if all_pairs else many
    t = time.perf_counter()
    one = [ex.explain(x, y, method=method, **opts) for x, y in pair_list(a, b, all_pairs)]
    t_one = time.perf_counter() - t
    diff = max(float(np.abs(m.matrix - o.matrix).max()) for m, o in zip(flat, one))
    return t_many, t_one, diff, flat[0].extras.get("job", {})


def zero_columns(steps: int, runs: int) -> dict:
    import simattr
    from simattr import jobs as J
    from simattr.methods.ij import IJJob
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_ij import TEXTS, long_texts
    enc = simattr.Explainer().encoder_a
    job = IJJob(enc, enc, steps=steps)
    with job.context():
        sides = J.Sides(job, [(0, TEXTS["short"][0]), (1, long_texts(enc, 120)[1])])
        job.begin(sides, [(0, 1)])
        G, _ = job.attribution(sides[0])
        live = (G != 0).any(0)
        t_all, t_live = [], []
        for _ in range(runs):
            t = time.perf_counter()
            (M_all,), _ = job.cross([G], sides[1])
            t_all.append(time.perf_counter() - t)
            t = time.perf_counter()
            (M_live,), _ = job.cross([G[:, live]], sides[1])
            t_live.append(time.perf_counter() - t)
    row = {"query_units": G.shape[1], "active": int(live.sum()), "doc_tokens": sides[1].tokens.length,
           "all_s": statistics.median(t_all), "live_s": statistics.median(t_live),
           "max_abs_diff": float((M_all[live] - M_live).abs().max()), "runs": [t_all, t_live]}
    row["speedup"] = row["all_s"] / row["live_s"]
    print(f"cross pass, {row['query_units']} query columns ({row['active']} active) on {row['doc_tokens']} tokens, "
          f"{steps} steps: all {row['all_s']:.2f}s  active only {row['live_s']:.2f}s  x{row['speedup']:.2f}  "
          f"max|dA| {row['max_abs_diff']:.1e}", flush=True)
    return row


def bilrp_modes(cases: str, runs: int) -> list:
    import simattr
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_bilrp import CASES
    ex = simattr.Explainer()
    rows = []
    for case in cases.split(","):
        a, b = CASES[case]
        ex.explain(a, b, method="bilrp", sim="dot")  # warm-up
        times, last = {"auto": [], "forward": []}, {}
        for _ in range(runs):
            for mode in times:
                t = time.perf_counter()
                last[mode] = ex.explain(a, b, method="bilrp", sim="dot", mode=mode)
                times[mode].append(time.perf_counter() - t)
        e = last["auto"]
        row = {"case": case, "tokens": [len(e.tokens_a), len(e.tokens_b)], "auto_modes": e.settings["mode"],
               "auto_s": statistics.median(times["auto"]), "forward_s": statistics.median(times["forward"]),
               "max_abs_diff": float(np.abs(e.matrix - last["forward"].matrix).max()),
               "runs": [times["auto"], times["forward"]]}
        row["speedup"] = row["forward_s"] / row["auto_s"]
        rows.append(row)
        print(f"bilrp {case} {row['tokens']}: auto {row['auto_modes']} {row['auto_s']:.2f}s  forward "
              f"{row['forward_s']:.2f}s  x{row['speedup']:.2f}  max|dA| {row['max_abs_diff']:.1e}", flush=True)
    return rows


def cache(steps: int, runs: int) -> dict:
    import simattr
    plain = simattr.Explainer()
    cached = simattr.Explainer(plain.encoder_a, cache_size=16)
    plain.explain("warm up", "the model", steps=steps)
    times = {"cache": [], "none": []}
    for _ in range(runs):
        for name, ex in (("cache", cached), ("none", plain)):
            if ex.cache is not None:
                ex.clear_cache()
            t = time.perf_counter()
            out = [ex.explain(QUERIES[0], d, steps=steps) for d in DOCS]
            times[name].append(time.perf_counter() - t)
            if name == "cache":
                got = out
    diff = max(float(np.abs(a.matrix - b.matrix).max()) for a, b in zip(got, out))
    row = {"cache_s": statistics.median(times["cache"]), "none_s": statistics.median(times["none"]),
           "max_abs_diff": diff, "runs": times}
    row["speedup"] = row["none_s"] / row["cache_s"]
    print(f"query against 8 documents, one call each, {steps} steps: cache {row['cache_s']:.2f}s  none "
          f"{row['none_s']:.2f}s  x{row['speedup']:.2f}  max|dA| {diff:.1e}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", action="store_true", help="only explain calls with vs without Explainer(cache_size)")
    ap.add_argument("--bilrp-modes", action="store_true", help="only single-pair BiLRP, mode auto vs forward")
    ap.add_argument("--cases", default="short,medium", help="with --bilrp-modes: bench_bilrp.py's pairs")
    ap.add_argument("--zero-columns", action="store_true", help="only the zero-columns cross-pass comparison")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default="ij,bilrp")
    ap.add_argument("--jobs", default="query-docs,grid,aligned")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    single = {"cache": lambda: cache(args.steps, args.runs), "bilrp_modes": lambda: bilrp_modes(args.cases, args.runs),
              "zero_columns": lambda: zero_columns(args.steps, args.runs)}
    for name, measure in single.items():  # a comparison of its own instead of the jobs table
        if getattr(args, name):
            result = measure()
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump({"threads": args.threads, "steps": args.steps, name: result}, fh, indent=1)
            return
    import simattr
    ex = simattr.Explainer()
    rows = []
    for method in args.methods.split(","):
        opts = dict(steps=args.steps) if method == "ij" else dict(sim="dot")
        for name in args.jobs.split(","):
            job = jobs()[name]
            ex.explain("warm up", "the model", method=method, **opts)
            times = [run(ex, job, method, opts) for _ in range(args.runs)]
            t_many = statistics.median(t[0] for t in times)
            t_one = statistics.median(t[1] for t in times)
            info = times[0][3]
            row = {"method": method, "job": name, "pairs": len(pair_list(*job)), "many_s": t_many, "pairwise_s": t_one,
                   "speedup": t_one / t_many, "max_abs_diff": max(t[2] for t in times), "plan": info,
                   "runs": [t[:2] for t in times]}
            rows.append(row)
            print(f"{method:>5} {name:>10} {row['pairs']:>3} pairs: explain_many {t_many:7.2f}s  pair by pair "
                  f"{t_one:7.2f}s  x{row['speedup']:.2f}  max|dA| {row['max_abs_diff']:.1e}  plan: "
                  f"{info.get('materialised')} G's made, {info.get('cross')} cross / {info.get('both')} both, "
                  f"modelled cost {info.get('cost', 0):.0f} vs {info.get('pairwise_cost', 0):.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "steps": args.steps, "runs": args.runs, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
