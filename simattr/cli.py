"""Command line: `simattr explain A B [...]`, `simattr explain-many PAIRS [...]` and `simattr info`."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

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
    _add_options(e)
    e.add_argument("--top", type=int, default=10, help="strongest interactions to print")
    e.add_argument("--json", action="store_true", help="print the explanation as JSON")
    e.add_argument("--html", default=None, metavar="FILE", help="also write an HTML heatmap of the matrix")
    e.add_argument("--png", default=None, metavar="FILE", help="also write a PNG heatmap (needs matplotlib)")
    e.add_argument("--faithfulness", action="store_true",
                   help="also check the matrix against the model by occlusion (simattr.evaluate): correlation with "
                        "pairwise occlusion interactions, deletion areas")
    m = sub.add_parser("explain-many", help="explain many pairs (JSON lines out); each text's G at most once",
                       description="Pairs from a file (JSON lines with 'a' and 'b', or two tab-separated columns; "
                                   "'-': standard input), or every text of --texts-a with every text of --texts-b "
                                   "(--all-pairs) or line by line. One JSON object per pair is written, in order.")
    m.add_argument("pairs", nargs="?", default=None, help="JSON-lines or TSV file of pairs, '-' for stdin")
    m.add_argument("--texts-a", default=None, help="file, one text a per line")
    m.add_argument("--texts-b", default=None, help="file, one text b per line")
    m.add_argument("--all-pairs", action="store_true", help="with --texts-a/--texts-b: every a with every b")
    m.add_argument("--output", "-o", default=None, help="JSON-lines file to write (default: standard output)")
    m.add_argument("--job-size", type=int, default=1000,
                   help="pairs planned and computed together (their texts' G's shared); bounds memory")
    m.add_argument("--resume", action="store_true",
                   help="with --output: keep the pairs already written there (a cut last line is dropped), "
                        "append the rest")
    m.add_argument("--skip-errors", action="store_true",
                   help="a pair that cannot be explained (e.g. a text over the maximum length) is written as "
                        "{index, a, b, error} and the job goes on")
    m.add_argument("--progress", action="store_true", help="a line on stderr after each pair: done, s/pair, time left")
    m.add_argument("--faithfulness", action="store_true",
                   help="add each pair's check against the model by occlusion (simattr.evaluate) to its line")
    m.add_argument("--shard", default=None, metavar="K/N",
                   help="explain only the K-th of N contiguous shares of the pairs (K = 0..N-1; indices stay global)")
    _add_options(m)
    i = sub.add_parser("info", help="which backends are available")
    i.add_argument("--json", action="store_true")
    if suppress:  # a parser whose namespace holds only the options given on the command line
        for action in e._actions + m._actions:
            action.default = argparse.SUPPRESS
    return p


def _add_options(e):
    """The model and method options shared by explain and explain-many."""
    e.add_argument("--model", default=None, help="model directory or name (default: bundled all-MiniLM-L6-v2)")
    e.add_argument("--model-b", default=None, help="a second tower for text B (query/document encoders)")
    e.add_argument("--pooling", default=None, choices=["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
    e.add_argument("--method", default="ij", help="ij (default), bilrp, maxsim, bertscore or ot")
    e.add_argument("--layer", type=int, default=None,
                   help="ij/bilrp: attribute at the input of this block (default 0: embeddings); maxsim/bertscore/ot: "
                        "token embeddings after this many blocks (default: the last layer)")
    e.add_argument("--steps", type=_steps, default=None,
                   help="ij: 'auto' (default: path nodes placed per text until the completeness error is under "
                        "--tol) or a fixed number of steps")
    e.add_argument("--tol", type=float, default=None, help="ij: completeness tolerance of --steps auto (default 1e-3)")
    e.add_argument("--max-steps", type=int, default=None,
                   help="ij: most path nodes per text under --steps auto (default 512); a pair that does not reach "
                        "--tol within it is reported as not converged")
    e.add_argument("--no-retry-float64", dest="retry_float64", action="store_false", default=None,
                   help="ij: do not re-run a text in float64 when its float32 path stalls (default: re-run)")
    e.add_argument("--quadrature", default=None,
                   choices=["auto", "adaptive_gauss", "riemann_midpoint", "riemann_trapezoid", "riemann_left",
                            "riemann_right", "gauss_legendre"],
                   help="ij: auto (default: adaptive_gauss with --steps auto, riemann_midpoint with a fixed count)")
    e.add_argument("--units", default="token", choices=["token", "word"])
    e.add_argument("--sim", default="cosine", choices=["cosine", "dot"])
    e.add_argument("--reference", default="pad", help="'pad' (default), 'zero', or a reference text")
    e.add_argument("--exact", action="store_true", help="reference-centred model f' = f - f(r)")
    e.add_argument("--rule", default="cp", choices=["cp", "attnlrp"],
                   help="bilrp: LRP rule set (cp: CP-LRP, attention probabilities constant; attnlrp: AttnLRP)")
    e.add_argument("--bias", default=None, choices=["absorb", "epsilon", "epsilon-ln", "redistribute", "redistribute-abs"],
                   help="bilrp: how biases share relevance (default epsilon-ln; absorb: the authors' CP-LRP)")
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
    return e


#: command-line destination -> method option name (None: not a method option)
_OPTION_NAMES = {"layer": "layer", "steps": "steps", "tol": "tol", "max_steps": "max_steps", "retry_float64": "retry_float64", "quadrature": "quadrature", "units": "units",
                 "sim": "sim", "reference": "reference", "exact": "exact", "mode": "mode", "max_memory": "max_memory",
                 "batch_size": "internal_batch_size", "truncate": "truncate", "idf_corpus": "idf",
                 "baseline": "baseline", "skiplist": "skiplist", "normalize": "normalize", "special": "special", "solver": "solver", "eps": "eps", "mass": "mass", "threshold": "threshold",
                 "aggregate": "aggregate", "backend": "backend", "attention": "attention", "rule": "rule", "bias": "bias",
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


def _explainer(args, argv):
    """(Explainer, explicit options, soft options); options the method does not take fail before the model loads."""
    import torch

    from .api import Explainer, select_options
    from .methods import METHODS

    explicit, soft = _method_options(args, argv)
    explicit.pop("method", None)
    if args.method in METHODS:
        select_options(args.method, METHODS[args.method], explicit)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    ex = Explainer(args.model, args.model_b, pooling=args.pooling, device=args.device, dtype=dtype,
                   max_length=args.max_length)
    return ex, explicit, soft


def _explain(args, argv=None) -> int:
    ex, explicit, soft = _explainer(args, argv)
    result = ex.explain(args.text_a, args.text_b, method=args.method, soft_options=soft, **explicit)
    check = failed = None
    if args.faithfulness:
        try:
            check = _faithfulness(ex, args.text_a, args.text_b, result, args)
        except SimattrError as exc:  # the explanation is still printed, then the error
            failed = exc
    if args.html:
        result.to_html(args.html)
    if args.png:
        result.to_png(args.png)
    if args.json:
        print(result.to_json())
    else:
        print(result.format(top=args.top))
        if check is not None:
            print(check.summary())
    if failed is not None:
        raise failed
    return 0


def _faithfulness(ex, a, b, result, args):
    """simattr.evaluate.faithfulness of `result` (occlusion settings follow the explanation's), also stored in
    result.extras["faithfulness"] (so in its JSON)."""
    from .evaluate import faithfulness
    check = faithfulness(ex, a, b, result, truncate=bool(args.truncate))
    result.extras["faithfulness"] = {"pearson": check.pearson, "spearman": check.spearman,
                                     "units_pearson": check.pearson_rows, "deletion_auc": check.auc,
                                     "random_std": check.random_std, "settings": check.settings}
    return check


def _lines(path):
    fh = sys.stdin if path == "-" else None
    try:
        if fh is None:
            fh = open(path, encoding="utf-8")
        with fh:
            return [ln.rstrip("\n") for ln in fh]
    except OSError as exc:
        raise SimattrError(f"cannot read {path!r}: {exc.strerror}") from None


def _read_pairs(args) -> list:
    """[(index_a, index_b, text_a, text_b)] from the command line's sources."""
    if args.pairs is not None:
        if args.texts_a or args.texts_b or args.all_pairs:
            raise SimattrError("give a pairs file, or --texts-a and --texts-b, not both")
        out = []
        for n, line in enumerate(_lines(args.pairs), 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                    a, b = obj.get("a", obj.get("text_a")), obj.get("b", obj.get("text_b"))
                except (json.JSONDecodeError, AttributeError):
                    a = b = None
            else:
                cols = line.split("\t")
                a, b = cols if len(cols) == 2 else (None, None)
            if not isinstance(a, str) or not isinstance(b, str):
                raise SimattrError(f"{args.pairs}:{n}: expected a JSON object with 'a' and 'b' or two "
                                   f"tab-separated texts")
            out.append((len(out), len(out), a, b))
        return out
    if not (args.texts_a and args.texts_b):
        raise SimattrError("give a pairs file, or --texts-a and --texts-b")
    ta = [t for t in _lines(args.texts_a) if t.strip()]
    tb = [t for t in _lines(args.texts_b) if t.strip()]
    if args.all_pairs:
        return [(i, j, a, b) for i, a in enumerate(ta) for j, b in enumerate(tb)]
    if len(ta) != len(tb):
        raise SimattrError(f"{len(ta)} texts a and {len(tb)} texts b: give equal numbers, or --all-pairs")
    return [(k, k, a, b) for k, (a, b) in enumerate(zip(ta, tb))]


def _shard(spec: str, n: int) -> range:
    try:
        k, parts = (int(v) for v in spec.split("/"))
    except ValueError:
        k, parts = -1, 0
    if not 0 <= k < parts:
        raise SimattrError(f"--shard takes K/N with 0 <= K < N, not {spec!r}")
    return range(k * n // parts, (k + 1) * n // parts)


def _written(path) -> set:
    """Indices of the pairs already in an explain-many output; a last line cut short (a killed run) is removed."""
    import os
    if not os.path.exists(path):
        return set()
    with open(path, "rb+") as fh:
        data = fh.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            fh.truncate(end)
    done = set()
    for n, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        try:
            done.add(int(json.loads(line)["index"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise SimattrError(f"{path}:{n}: not a line of simattr explain-many; cannot resume") from None
    return done


def _explain_many(args, argv) -> int:
    if args.job_size < 1:
        raise SimattrError(f"--job-size must be positive, got {args.job_size}")
    if args.resume and not args.output:
        raise SimattrError("--resume needs --output")
    todo = list(enumerate(_read_pairs(args)))  # (global index, (index_a, index_b, text_a, text_b))
    if not todo:
        raise SimattrError("no pairs to explain")
    if args.shard:
        todo = [todo[k] for k in _shard(args.shard, len(todo))]
    if args.resume:
        done = _written(args.output)
        todo = [t for t in todo if t[0] not in done]
        if not todo:
            return 0
    ex, explicit, soft = _explainer(args, argv)
    out = sys.stdout if args.output is None else open(args.output, "a" if args.resume else "w", encoding="utf-8")
    t0, done = time.perf_counter(), 0

    def write(k, i, j, fields):
        nonlocal done
        out.write(json.dumps({"index": k, "a": i, "b": j, **fields}) + "\n")
        out.flush()
        done += 1
        if args.progress:
            rate = (time.perf_counter() - t0) / done
            print(f"simattr: {done}/{len(todo)} pairs, {rate:.2f} s/pair, about "
                  f"{rate * (len(todo) - done) / 60:.1f} min left", file=sys.stderr, flush=True)

    try:
        for k0 in range(0, len(todo), args.job_size):
            block = todo[k0:k0 + args.job_size]
            written = 0
            try:
                results = ex.iter_many([t[1][2] for t in block], [t[1][3] for t in block], method=args.method,
                                       soft_options=soft, **explicit)
                with contextlib.closing(results):  # ij/bilrp: each pair written (and flushed) when it is done
                    for (k, (i, j, a, b)), e in zip(block, results):
                        if args.faithfulness:
                            _faithfulness(ex, a, b, e, args)
                        write(k, i, j, e.to_dict())
                        written += 1
            except SimattrError:
                if not args.skip_errors:
                    raise
                # a text of this block cannot be explained: the rest of the block pair by pair, errors as lines
                for k, (i, j, a, b) in block[written:]:
                    try:
                        e = ex.explain(a, b, method=args.method, soft_options=soft, **explicit)
                        if args.faithfulness:
                            _faithfulness(ex, a, b, e, args)
                        write(k, i, j, e.to_dict())
                    except SimattrError as exc:
                        write(k, i, j, {"error": str(exc)})
    finally:
        if out is not sys.stdout:
            out.close()
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
        if args.command == "explain-many":
            return _explain_many(args, argv)
        return _info(args)
    except SimattrError as exc:
        print(f"simattr: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`simattr explain ... | head`): not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
