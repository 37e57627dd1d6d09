"""Command line: `simattr explain A B [...]`, `simattr explain-many PAIRS [...]` and `simattr info`."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

from .errors import OutputError, SimattrError


def _floats3(value: str):
    try:
        vals = [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        vals = []
    if len(vals) != 3:
        raise SimattrError(f"--baseline takes 'P,R,F' (three numbers) or an existing baseline file, not {value!r}")
    return vals


def _parser() -> argparse.ArgumentParser:
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
    sub.add_parser("options", help="every method's options (the reference in docs/options.md, as Markdown)")
    i = sub.add_parser("info", help="which backends are available")
    i.add_argument("--json", action="store_true")
    return p


def _add_options(e):
    """The model options and every method's options (generated from the methods' tables, `simattr.options`),
    shared by explain and explain-many."""
    from . import options
    from .methods import METHODS, OPTIONS
    e.add_argument("--model", default=None, help="model directory or name (default: bundled all-MiniLM-L6-v2)")
    e.add_argument("--model-b", default=None, help="a second tower for text B (query/document encoders)")
    e.add_argument("--pooling", default=None, choices=["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
    e.add_argument("--method", default="ij", choices=list(METHODS), help="explanation method (default ij)")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    e.add_argument("--max-length", type=int, default=None)
    group = e.add_argument_group("method options (docs/options.md; each says which methods take it)")
    global _OPTION_NAMES
    _OPTION_NAMES = options.add_arguments(group, OPTIONS)
    return e


#: command-line destination -> method option name (filled by `_add_options` from the methods' tables)
_OPTION_NAMES = {}


def _method_options(args, argv):
    """The method options given on the command line (each must be taken by the method; the others keep the
    method's defaults), files read: --idf-corpus FILE as its texts, --baseline as a file or 'P,R,F'."""
    explicit = {}
    for dest, name in _OPTION_NAMES.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "idf_corpus":
            value = _read_corpus(value)
        if dest == "baseline":
            value = value if _is_file(value) else _floats3(value)
        explicit[name] = value
    return explicit


def _is_file(path):
    import os
    return os.path.isfile(path)


def _read_corpus(path):
    lines = [ln.strip() for ln in _lines(path, "the idf corpus") if ln.strip()]
    if not lines:
        raise SimattrError(f"the idf corpus {path!r} holds no text")
    return lines


def _explainer_options(args) -> dict:
    """The method options of the command line, checked against the method's table (before any model loads)."""
    from .api import resolve_options
    if getattr(args, "top", 0) is not None and getattr(args, "top", 0) < 0:
        raise SimattrError(f"--top must be 0 or more, got {args.top}")
    explicit = _method_options(args, None)
    resolve_options(args.method, explicit)
    return explicit


def _explainer(args, argv):
    """(Explainer, explicit options, soft options); options the method does not take fail before the model loads."""
    import torch

    from .api import Explainer

    explicit = _explainer_options(args)
    soft = {}
    dtype = getattr(torch, args.dtype) if args.dtype else None
    ex = Explainer(args.model, args.model_b, pooling=args.pooling, device=args.device, dtype=dtype,
                   max_length=args.max_length)
    return ex, explicit, soft


def _explain(args, argv=None) -> int:
    _check_outputs(args)
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


def _lines(path, what: str = "") -> list:
    """The lines of a UTF-8 text file ('-': standard input); a file that cannot be read or is not UTF-8 text is a
    SimattrError naming it (and the line of the first bad byte)."""
    label = f"{what} {path!r}" if what else repr(path)
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise SimattrError(f"cannot read {label}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SimattrError(f"{label} is not UTF-8 text (line {line}, byte {exc.start}: "
                           f"{data[exc.start:exc.start + 1]!r}); convert it, e.g. iconv -t UTF-8") from None
    if "\x00" in text:
        raise SimattrError(f"{label} holds NUL bytes: a binary file, not text")
    if not text:
        return []
    return [ln.rstrip("\r") for ln in text.split("\n")][: -1 if text.endswith("\n") else None]


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


def _job_settings(args, pairs: list) -> dict:
    """What decides an explain-many job's lines: method, options, model and the input pairs (by a digest)."""
    import hashlib
    digest = hashlib.sha256()
    for _, _, a, b in pairs:
        digest.update(json.dumps([a, b]).encode("utf-8"))
    options = {dest: getattr(args, dest, None) for dest in _OPTION_NAMES}
    return {"method": args.method, "options": options, "model": args.model, "model_b": args.model_b,
            "pooling": args.pooling, "dtype": args.dtype, "max_length": args.max_length, "shard": args.shard,
            "faithfulness": args.faithfulness, "pairs": digest.hexdigest()}


def _check_outputs(args, inputs=()) -> None:
    """Every file the command will write, checked before the model loads: its folder exists, it is not a folder,
    it is not one of the inputs."""
    from .outputs import check_writable, same_file
    for flag in ("output", "html", "png"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        check_writable(path, f"--{flag}")
        for source in inputs:
            if source and source != "-" and same_file(path, source):
                raise SimattrError(f"--{flag} {path!r} is the input file {source!r}; write elsewhere")


def _explain_many(args, argv) -> int:
    from .outputs import JobOutput, settings_hash
    if args.job_size < 1:
        raise SimattrError(f"--job-size must be positive, got {args.job_size}")
    if args.resume and not args.output:
        raise SimattrError("--resume needs --output")
    _check_outputs(args, (args.pairs, args.texts_a, args.texts_b))
    pairs = _read_pairs(args)
    todo = list(enumerate(pairs))  # (global index, (index_a, index_b, text_a, text_b))
    if not todo:
        raise SimattrError("no pairs to explain")
    if args.shard:
        todo = [todo[k] for k in _shard(args.shard, len(todo))]
    _explainer_options(args)  # a bad option fails before anything is written or loaded
    with contextlib.ExitStack() as stack:
        job = None
        if args.output is not None:
            job = stack.enter_context(JobOutput(args.output, settings_hash(_job_settings(args, pairs)), args.resume))
            todo = [t for t in todo if t[0] not in job.done]
        if todo:
            _run_many(args, argv, todo, job.write if job else _stdout_line)
        if job is not None:
            job.finish()
    return 0


def _stdout_line(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _run_many(args, argv, todo: list, emit) -> None:
    ex, explicit, soft = _explainer(args, argv)
    t0, done = time.perf_counter(), 0

    def write(k, i, j, fields):
        nonlocal done
        emit({"index": k, "a": i, "b": j, **fields})
        done += 1
        if args.progress:
            rate = (time.perf_counter() - t0) / done
            print(f"simattr: {done}/{len(todo)} pairs, {rate:.2f} s/pair, about "
                  f"{rate * (len(todo) - done) / 60:.1f} min left", file=sys.stderr, flush=True)

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
        except OutputError:
            raise
        except SimattrError:
            if not args.skip_errors:
                raise
            # a text of this block cannot be explained: the rest of the block pair by pair, errors as lines
            for k, (i, j, a, b) in block[written:]:
                try:
                    e = ex.explain(a, b, method=args.method, soft_options=soft, **explicit)
                    if args.faithfulness:
                        _faithfulness(ex, a, b, e, args)
                    fields = e.to_dict()
                except OutputError:
                    raise
                except SimattrError as exc:
                    fields = {"error": str(exc)}
                write(k, i, j, fields)


def _info(args) -> int:
    from .backends import REGISTRY
    from .report import info as backend_info

    info = backend_info()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, val in info.items():
            if key in REGISTRY:  # an operator: one line per backend
                for name, sub in val.items():
                    label = f"{key} {name}"
                    if isinstance(sub, dict):
                        state = "available" if sub.get("available") else "unavailable"
                        print(f"{label:>21}: {state} ({sub['reason']})")
                    else:
                        print(f"{label:>21}: {sub}")
            elif isinstance(val, dict):
                state = "available" if val.get("available") else "unavailable"
                why = f" ({val['reason']})" if val.get("reason") else ""
                print(f"{key:>21}: {state}{why}")
            else:
                print(f"{key:>21}: {val}")
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
        if args.command == "options":
            from .methods import OPTIONS
            from .options import markdown
            sys.stdout.write(markdown(OPTIONS))
            return 0
        return _info(args)
    except SimattrError as exc:
        print(f"simattr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("simattr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`simattr explain ... | head`): not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
