"""Command line: `simattr explain A B [...]`, `simattr explain-many PAIRS [...]`, `simattr rank QUERY --docs FILE`,
`simattr contrast QUERY DOC1 DOC2`, `simattr show FILE` and `simattr info`."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import SimattrError


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
    e.add_argument("--compare", action="store_true",
                   help="explain with every method of --method (a comma-separated list, e.g. ij,bilrp,maxsim,ot; "
                        "default those four): matrices side by side, rank correlations, faithfulness")
    m = sub.add_parser("explain-many", help="explain a dataset of pairs into Parquet parts or JSON lines",
                       description="Pairs from a file — JSON lines, CSV / TSV, Parquet (a file or a folder), a saved "
                                   "Hugging Face datasets folder; '-': JSON lines on standard input — or from "
                                   "--texts-a / --texts-b. One result row per pair (docs/jobs.md), by id.")
    m.add_argument("pairs", nargs="?", default=None,
                   help="the pairs: .jsonl, .csv, .tsv, .parquet, a folder of .parquet files, a datasets folder, '-'")
    m.add_argument("--columns", default=None, metavar="id=NAME,a=NAME,b=NAME",
                   help="the input's column names for id, a and b (default id, a, b; no id column: the row number)")
    m.add_argument("--texts-a", default=None, help="file, one text a per line")
    m.add_argument("--texts-b", default=None, help="file, one text b per line")
    m.add_argument("--all-pairs", action="store_true", help="with --texts-a/--texts-b: every a with every b")
    m.add_argument("--output", "-o", default=None,
                   help="a folder of Parquet parts, or a .jsonl file (default: JSON lines on standard output)")
    m.add_argument("--job-size", type=int, default=256,
                   help="pairs planned and computed together (their texts' G's shared) and written as one part")
    m.add_argument("--resume", action="store_true",
                   help="with --output: keep the ids already written, explain the rest (refused for another job)")
    m.add_argument("--progress", action="store_true",
                   help="progress lines on stderr (default: a progress bar when stderr is a terminal)")
    m.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    m.add_argument("--faithfulness", action="store_true",
                   help="add each pair's check against the model by occlusion (simattr.evaluate) to its row")
    m.add_argument("--shard", default=None, metavar="K/N",
                   help="explain only share K of N (K = 0..N-1; cost-balanced, as torchrun ranks are)")
    _add_options(m)
    sh = sub.add_parser("show", help="render a saved explanation (JSON, or a row of explain-many's output)",
                        description="Print a saved explanation and write it as HTML / PNG: a JSON file of "
                                    "Explanation.to_json, or one row (--id) of an explain-many output (a .jsonl file, "
                                    "a .parquet file or a folder of parts).")
    sh.add_argument("file")
    sh.add_argument("--id", default=None, help="the row's id (default: the only row, or the first)")
    _add_pictures(sh)
    r = sub.add_parser("rank", help="rank documents by the model's similarity to a query, explain the top K",
                       description="Documents (one per line of --docs) ranked by the model's similarity to QUERY "
                                   "(its own similarity function, no pass); with --explain the top K are explained "
                                   "in one job, the query's G made once.")
    r.add_argument("query")
    r.add_argument("--docs", required=True, metavar="FILE", help="the documents, one per line")
    r.add_argument("--top-k", type=int, default=10, help="how many to print and explain (default 10)")
    r.add_argument("--explain", action="store_true", help="explain the top K with --method")
    r.add_argument("--json", action="store_true", help="print the ranking (and explanations) as JSON")
    _add_options(r)
    c = sub.add_parser("contrast", help="why document 1 and not document 2: s(q, d1) - s(q, d2) explained",
                       description="One explanation of s(QUERY, DOC1) - s(QUERY, DOC2): the query's tokens against "
                                   "document 1's (columns 1:...) and document 2's (2:..., sign turned), with the "
                                   "difference decomposed (docs/beyond.md).")
    c.add_argument("query")
    c.add_argument("doc_1")
    c.add_argument("doc_2")
    _add_pictures(c)
    c.add_argument("--json", action="store_true")
    _add_options(c)
    rp = sub.add_parser("report", help="corpus-level evidence over a job's results (word pairs, word classes, "
                                        "errors, faithfulness)",
                        description="Over the rows of an explain-many output (.jsonl, .parquet, a folder of parts): "
                                    "the word pairs and words that contribute most, word classes (--class), the "
                                    "error distribution and the least faithful pairs; an HTML page with -o.")
    rp.add_argument("results")
    rp.add_argument("--output", "-o", default=None, metavar="FILE", help="write the report as HTML (plots embedded)")
    rp.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME=WORD,WORD",
                    help="a word class, e.g. negation=not,no,never (repeatable)")
    rp.add_argument("--top", type=int, default=10, help="rows of each table to print")
    rp.add_argument("--json", action="store_true", help="print every number as JSON")
    sub.add_parser("options", help="every method's options (the reference in docs/options.md, as Markdown)")
    i = sub.add_parser("info", help="which backends are available")
    i.add_argument("--json", action="store_true")
    return p


def _add_pictures(p):
    p.add_argument("--top", type=int, default=10, help="strongest interactions to print")
    p.add_argument("--html", default=None, metavar="FILE", help="write an HTML heatmap")
    p.add_argument("--png", default=None, metavar="FILE", help="write a PNG (or .svg / .pdf) heatmap")


def _add_options(e):
    """The model options and every method's options (generated from the methods' tables, `simattr.options`),
    shared by explain and explain-many."""
    from . import options
    from .methods import METHODS, OPTIONS
    e.add_argument("--model", default=None, help="model directory or name (default: bundled all-MiniLM-L6-v2)")
    e.add_argument("--model-b", default=None, help="a second tower for text B (query/document encoders)")
    e.add_argument("--pooling", default=None, choices=["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
    e.add_argument("--method", default=None, type=_method_name,
                   help=f"explanation method: {', '.join(METHODS)} (default ij; with --compare a comma-separated list)")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None, choices=["float32", "float64", "bfloat16", "float16"])
    e.add_argument("--max-length", type=int, default=None)
    e.add_argument("--truncate-dim", type=int, default=None, help="Matryoshka: the first N embedding dimensions")
    for side in ("a", "b"):
        e.add_argument(f"--task-{side}", default=None, help=f"text {side.upper()} as a 'query' or a 'document' "
                       f"(a Router's route, a multi-vector model's encoding, and the task's prompt)")
        e.add_argument(f"--prompt-{side}", default=None, help=f"a prompt put before text {side.upper()}")
        e.add_argument(f"--prompt-name-{side}", default=None, help=f"one of the model's prompts for text "
                       f"{side.upper()}")
    e.add_argument("--include-prompt", action="store_true", help="explain the prompt's tokens too (default: held as "
                   "context and left out)")
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
    from .inputs import read_lines
    lines = [ln.strip() for ln in read_lines(path, "the idf corpus") if ln.strip()]
    if not lines:
        raise SimattrError(f"the idf corpus {path!r} holds no text")
    return lines


def _method_name(value: str) -> str:
    """--method: a method's name, or a comma-separated list of them (for --compare)."""
    from .methods import METHODS
    names = [v.strip() for v in value.split(",")]
    bad = [v for v in names if v not in METHODS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown method {bad[0] if bad else value!r} (choose from "
                                         f"{', '.join(METHODS)}, or a comma-separated list with --compare)")
    return ",".join(names)


def _explainer_options(args) -> dict:
    """The method options of the command line, checked against the method's table (before any model loads)."""
    from .api import resolve_options
    from .compare import DEFAULT_METHODS
    if getattr(args, "top", 0) is not None and getattr(args, "top", 0) < 0:
        raise SimattrError(f"--top must be 0 or more, got {args.top}")
    explicit = _method_options(args, None)
    if getattr(args, "compare", False):
        args.method = args.method or ",".join(DEFAULT_METHODS)
        return explicit  # compare checks each option against the methods it lists
    args.method = args.method or "ij"
    if "," in args.method:
        raise SimattrError(f"--method {args.method}: several methods go with --compare")
    resolve_options(args.method, explicit)
    return explicit


def _explainer(args, argv, cache_size: int = 0):
    """(Explainer, explicit options, soft options); options the method does not take fail before the model loads.
    cache_size: G's kept across calls (explain-many: a text shared by pairs of several batches is made once)."""
    import torch

    from .api import Explainer

    explicit = _explainer_options(args)
    soft = {}
    dtype = getattr(torch, args.dtype) if args.dtype else None
    ex = Explainer(args.model, args.model_b, pooling=args.pooling, device=args.device, dtype=dtype,
                   max_length=args.max_length, truncate_dim=args.truncate_dim, cache_size=cache_size,
                   **_side_settings(args))
    return ex, explicit, soft


def _side_settings(args) -> dict:
    """task / prompt / prompt_name per side (a pair only where a side is given) and include_prompt."""
    out = {"include_prompt": bool(args.include_prompt)}
    for name in ("task", "prompt", "prompt_name"):
        a, b = getattr(args, f"{name}_a"), getattr(args, f"{name}_b")
        if a is not None or b is not None:
            out[name] = (a, b)
    return out


def _explain(args, argv=None) -> int:
    _check_outputs(args)
    ex, explicit, soft = _explainer(args, argv)
    if args.compare:
        return _compare(ex, args, explicit)
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


def _compare(ex, args, explicit) -> int:
    if args.faithfulness:
        raise SimattrError("--compare checks every method's faithfulness itself; drop --faithfulness")
    result = ex.compare(args.text_a, args.text_b, methods=args.method, **explicit)
    if args.html:
        result.to_html(args.html)
    if args.png:
        result.to_png(args.png)
    print(json.dumps(result.to_dict()) if args.json else result.format())
    return 0


def _report(args) -> int:
    from .corpus import report
    from .results import read_rows
    if args.top < 0:
        raise SimattrError(f"--top must be 0 or more, got {args.top}")
    classes = {}
    for spec in args.classes:
        name, sep, words = spec.partition("=")
        if not sep or not name.strip() or not [w for w in words.split(",") if w.strip()]:
            raise SimattrError(f"--class takes NAME=WORD,WORD..., got {spec!r}")
        classes[name.strip()] = [w.strip() for w in words.split(",") if w.strip()]
    if args.output:
        _check_outputs(args, (args.results,))
    rep = report(read_rows(args.results), classes)
    if args.output:
        rep.to_html(args.output)
    print(json.dumps(rep.to_dict(), default=str) if args.json else rep.format(top=args.top))
    return 0


def _rank(args, argv) -> int:
    from .inputs import read_lines
    _check_outputs(args, (args.docs,))
    docs = [d for d in read_lines(args.docs, "--docs") if d.strip()]
    if not docs:
        raise SimattrError(f"--docs {args.docs!r} holds no document (one per line)")
    if args.top_k < 0:
        raise SimattrError(f"--top-k must be 0 or more, got {args.top_k}")
    ex, explicit, soft = _explainer(args, argv)
    ranking = ex.rank(args.query, docs, top_k=args.top_k, explain=args.explain, method=args.method, **explicit)
    print(json.dumps(ranking.to_dict()) if args.json else ranking.format(k=args.top_k))
    return 0


def _contrast(args, argv) -> int:
    _check_outputs(args)
    ex, explicit, soft = _explainer(args, argv)
    result = ex.contrast(args.query, args.doc_1, args.doc_2, method=args.method, **explicit)
    if args.html:
        result.to_html(args.html)
    if args.png:
        result.to_png(args.png)
    print(result.to_json() if args.json else result.format(top=args.top))
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


def _read_pairs(args):
    """The command line's pairs (`simattr.inputs`)."""
    from .inputs import from_text_files, parse_columns, read_pairs
    if args.pairs is not None:
        if args.texts_a or args.texts_b or args.all_pairs:
            raise SimattrError("give a pairs file, or --texts-a and --texts-b, not both")
        return read_pairs(args.pairs, parse_columns(args.columns))
    if args.columns:
        raise SimattrError("--columns names the columns of a pairs file")
    if not (args.texts_a and args.texts_b):
        raise SimattrError("give a pairs file, or --texts-a and --texts-b")
    return from_text_files(args.texts_a, args.texts_b, args.all_pairs)


def _job_settings(args, pairs) -> dict:
    """What decides an explain-many job's rows: method, options, model and the input pairs with their ids (by a
    digest); stored in the output's metadata, its hash on every row."""
    import hashlib
    digest = hashlib.sha256()
    for i, a, b in zip(pairs.ids, pairs.a, pairs.b):
        digest.update(json.dumps([i, a, b], default=repr).encode("utf-8"))
    options = {dest: getattr(args, dest, None) for dest in _OPTION_NAMES}
    return {"method": args.method, "options": options, "model": args.model, "model_b": args.model_b,
            "pooling": args.pooling, "dtype": args.dtype, "max_length": args.max_length,
            "truncate_dim": args.truncate_dim, **{k: v for k, v in _side_settings(args).items() if v},
            "faithfulness": args.faithfulness, "pairs": digest.hexdigest(), "n_pairs": len(pairs)}


def _check_outputs(args, inputs=()) -> None:
    """Every file the command will write, checked before the model loads: its folder exists, it is not a folder,
    it is not one of the inputs."""
    import os

    from .outputs import PART, check_writable, same_file
    inputs = [p for p in (*inputs, getattr(args, "idf_corpus", None), getattr(args, "baseline", None))
              if p and p != "-" and os.path.exists(p)]
    written = []
    for flag in ("output", "html", "png"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        if flag != "output" or not os.path.isdir(path):
            check_writable(path, f"--{flag}")
        targets = [path] + ([path + PART] if flag == "output" else [])
        for target in targets:
            for source in inputs:
                if same_file(target, source) or os.path.abspath(target) == os.path.abspath(source):
                    raise SimattrError(f"--{flag} {path!r} would overwrite the input {source!r}; write elsewhere")
        for other_flag, other in written:
            if os.path.abspath(other) == os.path.abspath(path):
                raise SimattrError(f"--{flag} and --{other_flag} name the same file {path!r}")
        written.append((flag, path))


def _explain_many(args, argv) -> int:
    from . import explain_many, ranks
    from .outputs import settings_hash
    from .version import __version__
    if args.job_size < 1:
        raise SimattrError(f"--job-size must be positive, got {args.job_size}")
    if args.resume and not args.output:
        raise SimattrError("--resume needs --output")
    _check_outputs(args, (args.pairs, args.texts_a, args.texts_b))
    pairs = _read_pairs(args)
    if not len(pairs):
        raise SimattrError("no pairs to explain")
    rank = ranks.parse_shard(args.shard) if args.shard else ranks.from_environment()
    explicit = _explainer_options(args)  # a bad option fails before anything is written or loaded
    settings = _job_settings(args, pairs)
    metadata = {"simattr": __version__, "settings": settings, "rank": rank.rank, "world": rank.world}
    after = (lambda e, a, b: _faithfulness(ex_holder[0], a, b, e, args)) if args.faithfulness else None
    ex_holder = []

    def make_explainer():
        args.device = ranks.device_for(rank, args.device)
        ex, _, _ = _explainer(args, argv, cache_size=2 * args.job_size)
        ex_holder.append(ex)
        return ex
    progress = "none" if args.quiet else "lines" if args.progress else "bar" if sys.stderr.isatty() else "none"
    summary = explain_many.run(make_explainer, pairs, args.method, explicit, output=args.output,
                               resume=args.resume, job_hash=settings_hash(settings), metadata=metadata, rank=rank,
                               part_size=args.job_size, progress=progress, after=after, emit=_stdout_rows)
    if not args.quiet:
        print(summary.line(rank), file=sys.stderr)
    return 0


def _stdout_rows(rows: list) -> str:
    for r in rows:
        sys.stdout.write(json.dumps(r) + "\n")
    sys.stdout.flush()
    return ""


def _show(args) -> int:
    """simattr show FILE: a saved explanation printed, and drawn with --html / --png."""

    from .explanation import Explanation
    from .results import read_rows
    if args.top < 0:
        raise SimattrError(f"--top must be 0 or more, got {args.top}")
    _check_outputs(args, (args.file,))
    path = args.file
    rows = read_rows(path)
    if args.id is not None:
        found = [r for r in rows if isinstance(r, dict) and str(r.get("id")) == args.id]
        if not found:
            raise SimattrError(f"no row with id {args.id!r} in {path!r} ({len(rows)} rows)")
        row = found[0]
    else:
        row = rows[0]
    if not isinstance(row, dict):
        raise SimattrError(f"{path!r}: an explanation is a JSON object, not {type(row).__name__}")
    e = Explanation.from_row(row) if "status" in row else Explanation.from_dict(row)
    print(e.format(top=args.top))
    if args.html:
        e.to_html(args.html)
    if args.png:
        e.to_png(args.png)
    return 0


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
    if hasattr(args, "method") and args.method is None and not getattr(args, "compare", False):
        args.method = "ij"
    try:
        if args.command == "explain":
            return _explain(args, argv)
        if args.command == "explain-many":
            return _explain_many(args, argv)
        if args.command == "show":
            return _show(args)
        if args.command == "report":
            return _report(args)
        if args.command == "rank":
            return _rank(args, argv)
        if args.command == "contrast":
            return _contrast(args, argv)
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
