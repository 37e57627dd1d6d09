"""What the compiled extension buys after the quick-start install: BiLRP of the quick-start pair, IJ of it (50
steps), and a MaxSim batch of 64 ragged pairs, with the extension (simattr._C: ZeroTensor, contraction and MaxSim
kernels) against SIMATTR_NO_EXT=1 (the PyTorch paths). One thread; each measurement in its own process, the two
settings alternated, medians of --runs.

    python benchmarks/bench_extension.py [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CASE = """
import sys, time, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
import simattr
from simattr import backends
ex = simattr.Explainer()
A, B = "A man is playing a guitar.", "Someone plays an instrument."
case = sys.argv[1]
words = "the a cat dog sat ran on in park mat old new big small red blue happy quickly".split()
docs = [" ".join(words[(k * 7 + j) % len(words)] for j in range(4 + k % 20)) for k in range(64)]
def run():
    if case == "bilrp":
        ex.explain(A, B, method="bilrp")
    elif case == "ij":
        ex.explain(A, B, steps=50)
    else:
        ex.explain_many(["a man plays a guitar in the park"] * 64, docs, method="maxsim")
run()  # warm
t = time.perf_counter()
run()
print(time.perf_counter() - t, backends.extension().state)
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    base = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    print("| case | with the extension (s) | PyTorch paths (s) | speed-up |")
    print("| --- | --- | --- | --- |", flush=True)
    for case in ("bilrp", "ij", "maxsim"):
        times = {"ext": [], "torch": []}
        for _ in range(args.runs):
            for kind in ("ext", "torch"):
                env = dict(base, **({"SIMATTR_NO_EXT": "1"} if kind == "torch" else {}))
                out = subprocess.run([sys.executable, "-c", CASE, case], env=env, capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-2000:])
                seconds, state = out.stdout.split()
                if kind == "ext" and state == "disabled" or kind == "torch" and state != "disabled":
                    raise SystemExit(f"unexpected extension state {state} for {kind}")
                times[kind].append(float(seconds))
        e, t = statistics.median(times["ext"]), statistics.median(times["torch"])
        print(f"| {case} | {e:.3f} | {t:.3f} | {t / e:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
