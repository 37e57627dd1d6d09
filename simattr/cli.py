"""Command line: `simattr explain A B [...]` and `simattr info`."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import SimattrError


def _steps(value: str):
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--steps takes a positive integer or 'auto', not {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--steps must be positive, got {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simattr", description="Explain why two texts are similar, token by token.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="explain the similarity of two texts")
    e.add_argument("text_a")
    e.add_argument("text_b")
    e.add_argument("--model", default=None, help="model directory or name (default: bundled all-MiniLM-L6-v2)")
    e.add_argument("--model-b", default=None, help="a second tower for text B (query/document encoders)")
    e.add_argument("--pooling", default=None, choices=["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
    e.add_argument("--method", default="ij", help="ij (default) or bilrp")
    e.add_argument("--layer", type=int, default=0, help="attribute at the input of this block (0: embeddings)")
    e.add_argument("--steps", type=_steps, default=50, help="path steps, or 'auto'")
    e.add_argument("--tol", type=float, default=1e-4, help="completeness tolerance for --steps auto")
    e.add_argument("--quadrature", default="riemann_midpoint",
                   choices=["riemann_midpoint", "riemann_trapezoid", "riemann_left", "riemann_right", "gauss_legendre"])
    e.add_argument("--units", default="token", choices=["token", "word"])
    e.add_argument("--sim", default="cosine", choices=["cosine", "dot"])
    e.add_argument("--reference", default="pad", help="'pad' (default), 'zero', or a reference text")
    e.add_argument("--exact", action="store_true", help="reference-centred model f' = f - f(r)")
    e.add_argument("--rule", default="cp", choices=["cp", "attnlrp"],
                   help="bilrp: LRP rule set (cp: CP-LRP, attention probabilities constant; attnlrp: AttnLRP)")
    e.add_argument("--mode", default="auto", choices=["auto", "forward", "reverse"])
    e.add_argument("--max-memory", default=None, help="working-memory budget, e.g. 4GB")
    e.add_argument("--batch-size", type=int, default=None, help="tangents x path nodes per chunk")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    e.add_argument("--max-length", type=int, default=None)
    e.add_argument("--truncate", action="store_true", help="cut texts over the maximum length (with a warning)")
    e.add_argument("--top", type=int, default=10, help="strongest interactions to print")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    i = sub.add_parser("info", help="which backends are available")
    i.add_argument("--json", action="store_true")
    return p


def _explain(args) -> int:
    import torch

    from .api import Explainer

    opts = dict(layer=args.layer, steps=args.steps, tol=args.tol, quadrature=args.quadrature, units=args.units,
                sim=args.sim, reference=args.reference, exact=args.exact, mode=args.mode, rule=args.rule,
                max_memory=args.max_memory, internal_batch_size=args.batch_size, truncate=args.truncate)
    opts = _applicable(args.method, opts)  # before loading the model: a wrong option fails fast
    dtype = getattr(torch, args.dtype) if args.dtype else None
    ex = Explainer(args.model, args.model_b, pooling=args.pooling, device=args.device, dtype=dtype,
                   max_length=args.max_length)
    result = ex.explain(args.text_a, args.text_b, method=args.method, **opts)
    if args.json:
        print(result.to_json())
    else:
        print(result.format(top=args.top))
    return 0


#: option name -> (argparse dest, flag) where they differ from the option name
_FLAGS = {"internal_batch_size": ("batch_size", "--batch-size")}


def _applicable(method: str, opts: dict) -> dict:
    """The options the method takes. Options it does not take are dropped when left at their defaults and an
    error when given explicitly (e.g. --steps with --method bilrp)."""
    from .api import method_options

    accepted = method_options(method)
    if accepted is None:  # unknown method: the API names the choices
        return opts
    defaults = vars(_parser().parse_args(["explain", "", ""]))
    out = {}
    for key, value in opts.items():
        dest, flag = _FLAGS.get(key, (key, "--" + key.replace("_", "-")))
        if key in accepted:
            out[key] = value
        elif value != defaults.get(dest):
            raise SimattrError(f"option {flag} does not apply to method {method!r}")
    return out


def _info(args) -> int:
    from .ops import backend_info

    info = backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, val in info.items():
            if isinstance(val, dict):
                state = "available" if val.get("available") else "unavailable"
                why = f" ({val['reason']})" if val.get("reason") else ""
                print(f"{key:>12}: {state}{why}")
            else:
                print(f"{key:>12}: {val}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "explain":
            return _explain(args)
        return _info(args)
    except SimattrError as exc:
        print(f"simattr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
