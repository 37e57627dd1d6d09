"""How many of the package's functions, files and cross-module calls one `simattr.explain(a, b, method="ij")` runs
through (a structural measure of the code, not a timing): distinct simattr functions called, the files they are
in, and calls from one simattr module into another (counted once per caller -> callee function pair).

    python benchmarks/count_calls.py [--steps 4]
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="4")
    ap.add_argument("--method", default="ij")
    args = ap.parse_args(argv)
    import simattr
    root = os.path.dirname(os.path.abspath(simattr.__file__))
    kernels = os.path.join(os.path.dirname(root), "kernels")
    ex = simattr.Explainer()
    steps = args.steps if args.steps == "auto" else int(args.steps)
    opts = {"steps": steps} if args.method == "ij" else {}
    ex.explain("A man is playing a guitar.", "Someone plays an instrument.", method=args.method, **opts)  # warm

    functions, edges = set(), set()

    def ours(code):
        f = os.path.abspath(code.co_filename)
        return f.startswith(root + os.sep) or f.startswith(kernels + os.sep)

    def prof(frame, event, arg):
        if event != "call" or not ours(frame.f_code):
            return
        callee = (frame.f_code.co_filename, frame.f_code.co_name, frame.f_code.co_firstlineno)
        functions.add(callee)
        caller = frame.f_back
        while caller is not None and not ours(caller.f_code):
            caller = caller.f_back  # through torch / contextlib frames to the simattr function that caused the call
        if caller is not None and caller.f_code.co_filename != frame.f_code.co_filename:
            edges.add(((caller.f_code.co_filename, caller.f_code.co_name), callee))

    sys.setprofile(prof)
    try:
        ex.explain("A man is playing a guitar.", "Someone plays an instrument.", method=args.method, **opts)
    finally:
        sys.setprofile(None)
    files = {f for f, _, _ in functions}
    print(f"method={args.method}: {len(functions)} functions in {len(files)} files, {len(edges)} cross-module calls")
    for f in sorted(files):
        print(f"  {os.path.relpath(f, os.path.dirname(root))}: {sum(1 for g, _, _ in functions if g == f)}")


if __name__ == "__main__":
    main()
