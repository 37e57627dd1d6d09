"""What explaining a late-interaction (ColBERT) score costs, against the same backbone's cosine score.

The ColBERT model is the PyLate checkpoint of tests/fixtures/pylate-minilm (all-MiniLM-L6-v2 + a 128-d projection,
queries expanded to 16 tokens, the punctuation skiplist); the cosine model is the bundled all-MiniLM-L6-v2 itself.
For each pair of the fixture: MaxSim (no pass), IJ of the MaxSim score (steps="auto" and 32 uniform steps), BiLRP of
it, and IJ / BiLRP of the cosine model's score; runs alternate in one process, threads pinned; medians in seconds,
the completeness error and the nodes used.

    python benchmarks/bench_late_interaction.py --threads 1 --runs 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    torch.set_num_threads(args.threads)
    import warnings

    import simattr
    from tests import pylate_fixture
    ref = pylate_fixture.reference()
    with tempfile.TemporaryDirectory() as tmp:
        colbert = simattr.Explainer(str(pylate_fixture.assemble(Path(tmp) / "colbert")))
        cosine = simattr.Explainer()
        cases = {
            "maxsim (ColBERT)": (colbert, dict(method="maxsim")),
            "ij auto (ColBERT MaxSim)": (colbert, dict()),
            "ij 32 steps (ColBERT MaxSim)": (colbert, dict(steps=32)),
            "bilrp (ColBERT MaxSim)": (colbert, dict(method="bilrp", bias="redistribute-abs")),
            "ij auto (MiniLM cosine)": (cosine, dict()),
            "ij 32 steps (MiniLM cosine)": (cosine, dict(steps=32)),
            "bilrp (MiniLM cosine)": (cosine, dict(method="bilrp", bias="redistribute-abs")),
        }
        times = {name: [] for name in cases}
        last = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(args.runs):
                for name, (ex, opts) in cases.items():
                    t0 = time.perf_counter()
                    out = [ex.explain(q, d, **opts) for q, d in zip(ref["queries"], ref["documents"])]
                    times[name].append((time.perf_counter() - t0) / len(out))
                    last[name] = out
    rows = {}
    for name, ts in times.items():
        es = last[name]
        row = {"seconds_per_pair": statistics.median(ts), "score": [round(e.score, 6) for e in es],
               "shape": [list(e.matrix.shape) for e in es]}
        if es[0].method == "ij":
            row["error"] = [float(f"{e.error:.2e}") for e in es]
            row["nodes"] = [e.extras.get("steps_used") for e in es]
        if es[0].method == "bilrp":
            row["conservation"] = [round(e.extras["conservation"], 5) for e in es]
        rows[name] = row
    base = rows["ij auto (MiniLM cosine)"]["seconds_per_pair"]
    for row in rows.values():
        row["vs_ij_auto_cosine"] = round(row["seconds_per_pair"] / base, 2)
    print(json.dumps({"threads": args.threads, "runs": args.runs, "pylate_colbert_scores": ref["colbert_scores"],
                      "cases": rows}, indent=1))


if __name__ == "__main__":
    main()
