"""Every case of tests/hostile_cases.py (unusual and hostile inputs through the CLI and the API) run and counted:
clear errors, results that work, tracebacks, silent results (a result where an error or a warning was due) and
refusals of legitimate inputs. The counts are the table in docs/errors.md.

    python benchmarks/hostile_inputs.py [--show all|bad]
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", default="bad", choices=("all", "bad"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import simattr
    from hostile_cases import CASES, classify, files, run_case
    explainer = simattr.Explainer()
    counts = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        files(tmp)
        for name, kind, what, expect in CASES:
            outcome, detail = run_case(kind, what, tmp, explainer)
            verdict = classify(expect, outcome, detail)
            counts[verdict] += 1
            if args.show == "all" or verdict not in ("clear error", "works"):
                print(f"{verdict:>12} | {kind} | {name} | {str(detail)[:160]}", flush=True)
    print(f"{len(CASES)} inputs: " + ", ".join(f"{counts[k]} {k}" for k in
                                             ("clear error", "works", "traceback", "silent", "refused")))


if __name__ == "__main__":
    main()
