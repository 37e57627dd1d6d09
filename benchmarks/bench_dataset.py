"""Dataset-scale throughput of `simattr explain-many`: pairs/s on 200 STS-like short pairs and on one query x 200
documents, IJ (16 steps) and BiLRP, for one process, two torchrun processes and Ray Data with two actors (one
thread each), against the bare `Explainer.explain_many` loop (the overhead of the rows, Parquet parts and
resume bookkeeping), plus the cost of a `--resume` that finds everything written.

    python benchmarks/bench_dataset.py [--pairs 200] [--runners bare,one,torchrun,ray] [--methods ij,bilrp]

Each run is its own process (OMP_NUM_THREADS=1); model loading is not in the bare loop's time but is in the
command's (reported separately as the time of an empty job).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time

SUBJECTS = ["A man", "A woman", "The child", "A dog", "The chef", "A student", "The old farmer", "Two girls"]
VERBS = [("is playing", "plays"), ("is reading", "reads"), ("is cooking", "prepares"), ("is riding", "rides"),
         ("is painting", "paints"), ("is watching", "looks at")]
OBJECTS = ["a guitar", "a book", "some pasta", "a horse", "the fence", "the sea", "a small red bicycle"]


def sts_pairs(n: int) -> list:
    combos = itertools.islice(itertools.product(SUBJECTS, VERBS, OBJECTS), n)
    return [(f"{s} {v[0]} {o}.", f"{s.replace('A ', 'Someone, a ').lower().capitalize()} {v[1]} {o}.")
            for s, v, o in combos]


def query_docs(n: int) -> list:
    docs = [f"{a} {b}" for a, b in sts_pairs(n)]
    return [("who is playing music outside", d) for d in docs]


def write_pairs(path: str, pairs: list):
    with open(path, "w", encoding="utf-8") as fh:
        for k, (a, b) in enumerate(pairs):
            fh.write(json.dumps({"id": k, "a": a, "b": b}) + "\n")


BARE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import simattr
pairs = [json.loads(l) for l in open(sys.argv[1])]
opts = json.loads(sys.argv[3])
ex = simattr.Explainer()
t = time.perf_counter()
ex.explain_many([p["a"] for p in pairs], [p["b"] for p in pairs], method=sys.argv[2], **opts)
print(time.perf_counter() - t)
"""

RAY = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import ray
from simattr.integrations.ray import RayExplainer
pairs = [json.loads(l) for l in open(sys.argv[1])]
opts = json.loads(sys.argv[3])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
t = time.perf_counter()
ray.data.from_items(pairs).map_batches(RayExplainer, fn_constructor_kwargs=dict(method=sys.argv[2], **opts),
                                       concurrency=2, batch_size=64, batch_format="pyarrow").take_all()
print(time.perf_counter() - t)
"""


def timed(cmd, env) -> float:
    t = time.perf_counter()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{run.stderr[-2000:]}")
    return time.perf_counter() - t, run.stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--runners", default="bare,one,torchrun,ray")
    ap.add_argument("--methods", default="ij,bilrp")
    ap.add_argument("--workloads", default="sts,query")
    ap.add_argument("--memory", default=None, metavar="N1,N2",
                    help="instead: peak RSS of maxsim explain-many jobs of N1 and N2 pairs into Parquet parts")
    args = ap.parse_args(argv)
    if args.memory:
        return memory(args.memory)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    py = sys.executable
    print("| workload | method | runner | seconds | pairs/s | vs bare |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.jsonl")
        write_pairs(empty, [("a", "b")])
        startup, _ = timed([py, "-m", "simattr", "explain-many", empty, "--method", "maxsim", "--quiet"], env)
        print(f"| (start-up: load the model, one maxsim pair) | | one process | {startup:.1f} | | |", flush=True)
        for workload in args.workloads.split(","):
            pairs = sts_pairs(args.pairs) if workload == "sts" else query_docs(args.pairs)
            path = os.path.join(tmp, f"{workload}.jsonl")
            write_pairs(path, pairs)
            for method in args.methods.split(","):
                opts = {"steps": 16} if method == "ij" else {}
                flags = ["--steps", "16"] if method == "ij" else []
                bare = None
                for runner in args.runners.split(","):
                    out = os.path.join(tmp, f"{workload}-{method}-{runner}")
                    if runner == "bare":
                        _, stdout = timed([py, "-c", BARE, path, method, json.dumps(opts)], env)
                        seconds = bare = float(stdout.strip().splitlines()[-1])
                    elif runner == "one":
                        seconds, _ = timed([py, "-m", "simattr", "explain-many", path, "-o", out, "--method", method,
                                            "--quiet"] + flags, env)
                        seconds -= startup
                        resume, _ = timed([py, "-m", "simattr", "explain-many", path, "-o", out, "--method", method,
                                           "--quiet", "--resume"] + flags, env)
                        print(f"| {workload} | {method} | resume, all written | {resume:.1f} | | |", flush=True)
                    elif runner == "torchrun":
                        seconds, _ = timed([py, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                            "--master_port=0", "-m", "simattr", "explain-many", path, "-o", out,
                                            "--method", method, "--quiet"] + flags, env)
                        seconds -= startup
                    else:
                        _, stdout = timed([py, "-c", RAY, path, method, json.dumps(opts)], env)
                        seconds = float(stdout.strip().splitlines()[-1])
                    ratio = f"{bare / seconds:.2f}x" if bare else ""
                    print(f"| {workload} | {method} | {runner} | {seconds:.1f} | {len(pairs) / seconds:.2f} | "
                          f"{ratio} |", flush=True)


PEAK = """
import resource, subprocess, sys
run = subprocess.run([sys.executable, "-m", "simattr"] + sys.argv[1:], capture_output=True, text=True)
assert run.returncode == 0, run.stderr[-1000:]
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def memory(spec: str):
    """Peak resident memory of explain-many jobs of growing size: flat when rows are streamed to parts."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    print("| pairs | method | peak RSS (MB) | seconds |")
    print("| --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in spec.split(",")):
            path = os.path.join(tmp, f"{n}.jsonl")
            base = sts_pairs(336)
            write_pairs(path, [(a + f" ({k})", b) for k, (a, b) in zip(range(n), itertools.cycle(base))])
            seconds, out = timed([sys.executable, "-c", PEAK, "explain-many", path, "-o", os.path.join(tmp, f"o{n}"),
                                  "--method", "maxsim", "--quiet"], env)
            print(f"| {n} | maxsim | {float(out.strip()):.0f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
