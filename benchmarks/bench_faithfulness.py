"""How faithful is each method on a model? `simattr.evaluate.faithfulness` over a small set of sentence pairs.

    PYTHONPATH=. python benchmarks/bench_faithfulness.py [--methods ij,bilrp,maxsim,bertscore,ot] [--steps 50]
        [--units token] [--out F.json]

Per method, the mean over the pairs of: the Pearson / Spearman correlation of the token matrix with the model's
occlusion interactions I[u, v] = s(a, b) − s(a∖u, b) − s(a, b∖v) + s(a∖u, b∖v); the correlation of its row /
column sums with single-unit occlusion; the deletion areas (most relevant first / random / least relevant first;
faithful: most < random < least). Removal replaces tokens by the pad reference at the embeddings.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PAIRS = [
    ("A woman is slicing an onion in the kitchen.", "Someone cuts a vegetable with a knife."),
    ("A man is playing a guitar on stage.", "A musician performs with an instrument."),
    ("The cat sleeps on the warm windowsill.", "A kitten is napping in the sun."),
    ("Stock markets fell sharply after the announcement.", "Share prices dropped following the news."),
    ("The children are playing football in the park.", "Kids kick a ball on the grass."),
    ("He forgot his umbrella and got soaked.", "It rained and he had no umbrella."),
    ("The train to Berlin was delayed by two hours.", "Our flight to Paris left on time."),
    ("She is reading a book about ancient Rome.", "A dog is chasing a red ball."),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="ij,bilrp,maxsim,bertscore,ot")
    ap.add_argument("--steps", type=int, default=50, help="IJ steps")
    ap.add_argument("--units", default="token")
    ap.add_argument("--random-runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import simattr
    from simattr import evaluate
    ex = simattr.Explainer()
    rows = []
    for method in args.methods.split(","):
        kw = dict(steps=args.steps) if method == "ij" else {}
        stats, t0 = [], time.time()
        for a, b in PAIRS:
            e = ex.explain(a, b, method=method, units=args.units, **kw)
            f = evaluate.faithfulness(ex, a, b, e, random_runs=args.random_runs)
            stats.append([f.pearson, f.spearman, f.pearson_rows, f.auc["most"], f.auc["random"], f.auc["least"],
                          float(f.auc["most"] < f.auc["random"] < f.auc["least"])])
        m = np.nanmean(np.array(stats), 0)
        row = {"method": method, "pairs": len(PAIRS), "pearson": m[0], "spearman": m[1], "units_pearson": m[2],
               "auc_most": m[3], "auc_random": m[4], "auc_least": m[5], "ordered_share": m[6],
               "seconds": time.time() - t0}
        rows.append(row)
        print(f"{method:>9}: pairs r {m[0]:6.3f} (Spearman {m[1]:6.3f}) | units r {m[2]:6.3f} | deletion most "
              f"{m[3]:.3f} random {m[4]:.3f} least {m[5]:.3f} | most<random<least in {m[6]:.0%} of pairs "
              f"({row['seconds']:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"units": args.units, "ij_steps": args.steps, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
