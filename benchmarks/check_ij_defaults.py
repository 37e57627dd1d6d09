"""Does `simattr explain A B [--model DIR] --layer L --json` with default settings reach its completeness
tolerance (1e-3) on both real models? One CLI run per model x layer x pair, exactly as a user types it.

    python benchmarks/check_ij_defaults.py [--models minilm,mpnet] [--layers 0,4,8] [--pairs short,long]
                                           [--out results.jsonl]

Prints one markdown row per run (error, error / |score|, nodes per text and their precision, converged, wall
seconds); layers a model does not have are skipped. MPNet is assembled by tests/real_models.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PAIRS = {
    "short": ("A man is playing a guitar.", "Someone plays an instrument."),
    "long": ("The committee postponed its decision on the new budget until next month because several members "
             "wanted more time to study the financial reports sent by the regional offices.",
             "Members of the panel asked for extra weeks to review the regional finance documents, so the vote on "
             "next year's spending plan was delayed until the following month."),
}


def model_dir(name: str):
    if name == "minilm":
        return None, 6
    from real_models import mpnet_dir
    return str(mpnet_dir()), 12


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,mpnet")
    ap.add_argument("--layers", default="0,4,8")
    ap.add_argument("--pairs", default="short,long")
    ap.add_argument("--out", default=None, help="append one JSON line per run")
    args = ap.parse_args(argv)
    print("| model | layer | pair | tokens | error | error / score | nodes (dtype) | converged | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for model in args.models.split(","):
        path, n_layers = model_dir(model)
        for layer in (int(x) for x in args.layers.split(",")):
            if layer >= n_layers:
                continue
            for pair in args.pairs.split(","):
                a, b = PAIRS[pair]
                cmd = [sys.executable, "-m", "simattr", "explain", a, b, "--layer", str(layer), "--json"]
                if path:
                    cmd += ["--model", path]
                t0 = time.perf_counter()
                run = subprocess.run(cmd, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if run.returncode != 0:
                    print(f"| {model} | {layer} | {pair} | failed: {run.stderr.strip()[-200:]} |", flush=True)
                    continue
                d = json.loads(run.stdout)
                nodes = " / ".join(f"{n['nodes']} ({n['dtype']})" for n in d["nodes_per_side"])
                tokens = f"{len(d['tokens_a'])} / {len(d['tokens_b'])}"
                print(f"| {model} | {layer} | {pair} | {tokens} | {d['error']:.1e} | {d['relative_error']:.1e} | "
                      f"{nodes} | {d['converged']} | {seconds:.0f} |", flush=True)
                if args.out:
                    with open(args.out, "a") as fh:
                        fh.write(json.dumps({"model": model, "layer": layer, "pair": pair, "seconds": seconds,
                                             **{k: v for k, v in d.items() if k != "matrix"}}) + "\n")


if __name__ == "__main__":
    main()
