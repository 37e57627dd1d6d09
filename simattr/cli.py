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


def _floats3(value: str):
    try:
        vals = [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"--baseline takes 'P,R,F' (three numbers) or a file, not {value!r}")
    return vals


def _parser(suppress: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simattr", description="Explain why two texts are similar, token by token.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="explain the similarity of two texts")
    e.add_argument("text_a")
    e.add_argument("text_b")
    e.add_argument("--model", default=None, help="model directory or name (default: bundled all-MiniLM-L6-v2)")
    e.add_argument("--model-b", default=None, help="a second tower for text B (query/document encoders)")
    e.add_argument("--pooling", default=None, choices=["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
    e.add_argument("--method", default="ij", help="ij (default), bilrp, maxsim, bertscore or ot")
    e.add_argument("--layer", type=int, default=None,
                   help="ij/bilrp: attribute at the input of this block (default 0: embeddings); maxsim/bertscore/ot: "
                        "token embeddings after this many blocks (default: the last layer)")
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
    e.add_argument("--mode", default="auto", choices=["auto", "forward", "reverse", "cross"])
    e.add_argument("--attention", default="auto", choices=["auto", "fused", "eager"],
                   help="fused attention kernel (auto: on CUDA with Triton) or eager math")
    e.add_argument("--contraction", default="auto", choices=["auto", "torch", "cpp", "triton", "cuda"],
                   help="ij/bilrp reverse mode: Jacobian-contraction kernel (auto: where measured faster)")
    e.add_argument("--max-memory", default=None, help="working-memory budget, e.g. 4GB")
    e.add_argument("--batch-size", type=int, default=None, help="tangents x path nodes per chunk")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    e.add_argument("--max-length", type=int, default=None)
    e.add_argument("--truncate", action="store_true", help="cut texts over the maximum length (with a warning)")
    s = e.add_argument_group("set-based methods (maxsim, bertscore, ot)")
    s.add_argument("--idf-corpus", default=None, help="file with one corpus text per line: idf token weights "
                   "(bertscore; ot with --mass idf)")
    s.add_argument("--baseline", default=None, help="bertscore rescaling baseline: 'P,R,F' or a bert-score baseline file")
    s.add_argument("--skiplist", action="store_true", default=None, help="maxsim: skip punctuation tokens of the document")
    s.add_argument("--no-normalize", dest="normalize", action="store_false", default=None,
                   help="maxsim: raw dot products instead of cosines")
    s.add_argument("--special", action=argparse.BooleanOptionalAction, default=None,
                   help="maxsim: [CLS]/[SEP] take part in the matching (default yes); ot: they get mass (default no)")
    s.add_argument("--solver", default=None, choices=["auto", "emd", "sinkhorn"], help="ot solver (default auto: emd with POT)")
    s.add_argument("--eps", type=float, default=None, help="ot: Sinkhorn entropic regularisation (default 0.01)")
    s.add_argument("--mass", default=None, choices=["uniform", "idf"], help="ot: token masses (default uniform)")
    s.add_argument("--threshold", type=float, default=None,
                   help="ot: alignment threshold, share of a token's mass (default 0.5)")
    s.add_argument("--aggregate", default=None, choices=["sum", "mean", "max"],
                   help="subword-to-word aggregation with --units word (maxsim/bertscore: max, ot: sum)")
    s.add_argument("--backend", default=None, choices=["auto", "torch", "cpp", "triton"],
                   help="maxsim/bertscore: MaxSim kernel (default auto)")
    e.add_argument("--top", type=int, default=10, help="strongest interactions to print")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    i = sub.add_parser("info", help="which backends are available")
    i.add_argument("--json", action="store_true")
    if suppress:  # a parser whose namespace holds only the options given on the command line
        for action in e._actions:
            action.default = argparse.SUPPRESS
    return p


#: command-line destination -> method option name (None: not a method option)
_OPTION_NAMES = {"layer": "layer", "steps": "steps", "tol": "tol", "quadrature": "quadrature", "units": "units",
                 "sim": "sim", "reference": "reference", "exact": "exact", "mode": "mode", "max_memory": "max_memory",
                 "batch_size": "internal_batch_size", "truncate": "truncate", "idf_corpus": "idf",
                 "baseline": "baseline", "skiplist": "skiplist", "normalize": "normalize", "special": "special", "solver": "solver", "eps": "eps", "mass": "mass", "threshold": "threshold",
                 "aggregate": "aggregate", "backend": "backend", "attention": "attention", "rule": "rule",
                 "contraction": "contraction"}


def _method_options(args, argv):
    """(explicit, soft): options the user gave (must be taken by the method) and CLI defaults (dropped when the
    method does not take them)."""
    given = vars(_parser(suppress=True).parse_args(argv))
    explicit, soft = {}, {}
    for dest, name in _OPTION_NAMES.items():
        value = getattr(args, dest, None)
        if dest == "idf_corpus" and value is not None:
            value = _read_corpus(value)
        if dest == "baseline" and value is not None:
            value = value if _is_file(value) else _floats3(value)
        if dest in given:
            explicit[name] = value
        elif value is not None:
            soft[name] = value
    return explicit, soft


def _is_file(path):
    import os
    return os.path.isfile(path)


def _read_corpus(path):
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError as exc:
        raise SimattrError(f"cannot read the idf corpus {path!r}: {exc.strerror}") from None
    if not lines:
        raise SimattrError(f"the idf corpus {path!r} holds no text")
    return lines


def _explain(args, argv=None) -> int:
    import torch

    from .api import Explainer

    from .api import select_options
    from .methods import METHODS

    explicit, soft = _method_options(args, argv)
    explicit.pop("method", None)
    if args.method in METHODS:  # before loading the model: an option the method does not take fails fast
        select_options(args.method, METHODS[args.method], explicit)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    ex = Explainer(args.model, args.model_b, pooling=args.pooling, device=args.device, dtype=dtype,
                   max_length=args.max_length)
    result = ex.explain(args.text_a, args.text_b, method=args.method, soft_options=soft, **explicit)
    if args.json:
        print(result.to_json())
    else:
        print(result.format(top=args.top))
    return 0


def _info(args) -> int:
    from .ops import backend_info

    info = backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, val in info.items():
            if key in ("maxsim", "contraction"):
                for name, sub in val.items():
                    label = f"{key} {name}"
                    if isinstance(sub, dict):
                        state = "available" if sub.get("available") else "unavailable"
                        print(f"{label:>20}: {state} ({sub['reason']})")
                    else:
                        print(f"{label:>20}: {sub}")
            elif isinstance(val, dict):
                state = "available" if val.get("available") else "unavailable"
                why = f" ({val['reason']})" if val.get("reason") else ""
                print(f"{key:>20}: {state}{why}")
            else:
                print(f"{key:>20}: {val}")
    return 0


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = _parser().parse_args(argv)
    try:
        if args.command == "explain":
            return _explain(args, argv)
        return _info(args)
    except SimattrError as exc:
        print(f"simattr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
