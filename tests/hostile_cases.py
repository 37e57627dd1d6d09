"""Unusual and hostile inputs, as a new user would try them, each with what must happen: a clear error
(`SimattrError`, or on the command line one `simattr: error:` line / an argparse usage error, exit code 2, no
traceback), a result (the input is legitimate), or a result with a warning that says what is unusual about it.

Run by tests/test_hostile_inputs.py (one test per case) and counted by benchmarks/hostile_inputs.py (the counts
in docs/errors.md). A case is (name, kind, what, expect):

- kind "cli": `what` is the argument list after `simattr` (paths under {tmp} are made by `files`);
- kind "api": `what` is a function of (explainer, tmp) that calls the API;
- expect "error" (a clear error), "ok" (a result) or ("warn", pattern) (a result and a warning matching pattern).
"""
from __future__ import annotations

import math
import os

A, B = "A man is playing a guitar.", "Someone plays an instrument."
FAST = ["--steps", "2"]  # IJ with two fixed nodes: the cases are about inputs, not accuracy
STEPS = {"steps": 2}


def files(tmp: str) -> None:
    """The input files the command-line cases name."""
    def write(name, data: bytes):
        with open(os.path.join(tmp, name), "wb") as fh:
            fh.write(data)
    write("pairs.jsonl", b'{"a": "a cat", "b": "a dog"}\n{"a": "the sun", "b": "the moon"}\n')
    write("pairs.tsv", b"a cat\ta dog\n")
    write("binary.bin", bytes(range(256)) * 4)
    write("latin1.tsv", "caf\xe9 au lait\tth\xe9\n".encode("latin-1"))
    write("empty.jsonl", b"")
    write("blank.jsonl", b"\n\n  \n")
    write("no_b.jsonl", b'{"a": "a cat"}\n')
    write("three.tsv", b"a\tb\tc\n")
    write("not_string.jsonl", b'{"a": 1, "b": "x"}\n')
    write("list.jsonl", b'[1, 2]\n')
    write("texts.txt", b"a cat\nthe sun\n")
    write("texts3.txt", b"a cat\nthe sun\na bird\n")
    write("corpus_empty.txt", b"\n")
    write("not_a_model", b"hello")
    write("pairs.jsonl.part", b'{"a": "a cat", "b": "a dog"}\n')
    write("surrogate.jsonl", b'{"a": "x \\ud800 y", "b": "a dog"}\n{"a": "a cat", "b": "a dog"}\n')
    os.makedirs(os.path.join(tmp, "empty_model_dir"), exist_ok=True)
    os.makedirs(os.path.join(tmp, "a_directory"), exist_ok=True)
    os.makedirs(os.path.join(tmp, "parts"), exist_ok=True)
    write(os.path.join("parts", "part-r0000-000000.parquet"), b"PAR1")


EXPLAIN = ["explain", A, B]
MANY = ["explain-many", "{tmp}/pairs.jsonl"]

CLI = [
    # memory budgets
    ("max-memory inf", [*EXPLAIN, *FAST, "--max-memory", "inf"], "error"),
    ("max-memory nan", [*EXPLAIN, *FAST, "--max-memory", "nan"], "error"),
    ("max-memory 0", [*EXPLAIN, *FAST, "--max-memory", "0"], "error"),
    ("max-memory 0GB", [*EXPLAIN, *FAST, "--max-memory", "0GB"], "error"),
    ("max-memory -1GB", [*EXPLAIN, *FAST, "--max-memory=-1GB"], "error"),
    ("max-memory abc", [*EXPLAIN, *FAST, "--max-memory", "abc"], "error"),
    ("max-memory 1e400", [*EXPLAIN, *FAST, "--max-memory", "1e400"], "error"),
    ("max-memory 1KB (too small for one chunk)", [*EXPLAIN, *FAST, "--max-memory", "1KB"], "error"),
    ("max-memory 2GB", [*EXPLAIN, *FAST, "--max-memory", "2GB"], "ok"),
    # devices and dtypes
    ("device cuda without a GPU", [*EXPLAIN, *FAST, "--device", "cuda"], "error"),
    ("device nonsense", [*EXPLAIN, *FAST, "--device", "nonsense"], "error"),
    ("device cuda:7", [*EXPLAIN, *FAST, "--device", "cuda:7"], "error"),
    ("device cpu", [*EXPLAIN, *FAST, "--device", "cpu"], "ok"),
    ("dtype int8", [*EXPLAIN, *FAST, "--dtype", "int8"], "error"),
    # steps and tolerances
    ("steps 0", [*EXPLAIN, "--steps", "0"], "error"),
    ("steps -1", [*EXPLAIN, "--steps=-1"], "error"),
    ("steps abc", [*EXPLAIN, "--steps", "abc"], "error"),
    ("steps 1.5", [*EXPLAIN, "--steps", "1.5"], "error"),
    ("tol 0", [*EXPLAIN, "--tol", "0"], "error"),
    ("tol -1", [*EXPLAIN, "--tol=-1"], "error"),
    ("tol nan", [*EXPLAIN, "--tol", "nan"], "error"),
    ("tol inf", [*EXPLAIN, "--tol", "inf"], "error"),
    ("tol abc", [*EXPLAIN, "--tol", "abc"], "error"),
    ("max-steps 0", [*EXPLAIN, "--max-steps", "0"], "error"),
    ("max-steps 3 (below one adaptive interval)", [*EXPLAIN, "--max-steps", "3"], "error"),
    ("batch-size 0", [*EXPLAIN, *FAST, "--batch-size", "0"], "error"),
    ("quadrature nope", [*EXPLAIN, *FAST, "--quadrature", "nope"], "error"),
    # layers, lengths, units
    ("layer -1", [*EXPLAIN, *FAST, "--layer=-1"], "error"),
    ("layer 99", [*EXPLAIN, *FAST, "--layer", "99"], "error"),
    ("layer abc", [*EXPLAIN, *FAST, "--layer", "abc"], "error"),
    ("max-length 0", [*EXPLAIN, *FAST, "--max-length", "0"], "error"),
    ("max-length -5", [*EXPLAIN, *FAST, "--max-length=-5"], "error"),
    ("max-length 4 (text longer)", [*EXPLAIN, *FAST, "--max-length", "4"], "error"),
    ("max-length 4 with truncate", [*EXPLAIN, *FAST, "--max-length", "4", "--truncate"],
     ("warn", "truncat")),
    ("units nope", [*EXPLAIN, *FAST, "--units", "nope"], "error"),
    ("units word", [*EXPLAIN, *FAST, "--units", "word"], "ok"),
    ("top -1", [*EXPLAIN, *FAST, "--top=-1"], "error"),
    ("method nope", [*EXPLAIN, "--method", "nope"], "error"),
    ("option of another method", [*EXPLAIN, "--method", "maxsim", "--steps", "4"], "error"),
    ("pooling nope", [*EXPLAIN, *FAST, "--pooling", "nope"], "error"),
    # models
    ("model missing", [*EXPLAIN, *FAST, "--model", "{tmp}/no_such_model"], "error"),
    ("model is a file", [*EXPLAIN, *FAST, "--model", "{tmp}/not_a_model"], "error"),
    ("model empty directory", [*EXPLAIN, *FAST, "--model", "{tmp}/empty_model_dir"], "error"),
    # texts
    ("empty text", ["explain", "", B, *FAST], "error"),
    ("whitespace text", ["explain", "   ", B, *FAST], "error"),
    ("zero-width text", ["explain", "\u200b\u200b", B, *FAST], "error"),
    ("control characters", ["explain", "\x00\x01\x02", B, *FAST], "error"),
    ("emoji (unknown token)", ["explain", "I love it 😀", B, *FAST], ("warn", r"\[UNK\]")),
    ("maxsim empty text", ["explain", "", B, "--method", "maxsim"], "error"),
    ("bertscore zero-width text", ["explain", "\u200b", B, "--method", "bertscore"], "error"),
    ("ot control characters", ["explain", "\x00", B, "--method", "ot"], "error"),
    ("bilrp empty text", ["explain", "", B, "--method", "bilrp"], "error"),
    # pictures and outputs of explain
    ("html into a missing directory", [*EXPLAIN, *FAST, "--html", "{tmp}/missing/x.html"], "error"),
    ("html onto a directory", [*EXPLAIN, *FAST, "--html", "{tmp}/a_directory"], "error"),
    ("png into a missing directory", [*EXPLAIN, *FAST, "--png", "{tmp}/missing/x.png"], "error"),
    ("html ok", [*EXPLAIN, *FAST, "--html", "{tmp}/out.html"], "ok"),
    # set-based options
    ("bertscore baseline 1,1,1", [*EXPLAIN, "--method", "bertscore", "--baseline", "1,1,1"], "error"),
    ("bertscore baseline a,b,c", [*EXPLAIN, "--method", "bertscore", "--baseline", "a,b,c"], "error"),
    ("bertscore baseline nan", [*EXPLAIN, "--method", "bertscore", "--baseline", "nan,0,0"], "error"),
    ("bertscore baseline missing file", [*EXPLAIN, "--method", "bertscore", "--baseline", "{tmp}/no.tsv"],
     "error"),
    ("bertscore baseline is binary", [*EXPLAIN, "--method", "bertscore", "--baseline", "{tmp}/binary.bin"],
     "error"),
    ("bertscore idf corpus empty", [*EXPLAIN, "--method", "bertscore", "--idf-corpus",
                                        "{tmp}/corpus_empty.txt"], "error"),
    ("bertscore idf corpus binary", [*EXPLAIN, "--method", "bertscore", "--idf-corpus", "{tmp}/binary.bin"],
     "error"),
    ("ot threshold 1.5", [*EXPLAIN, "--method", "ot", "--threshold", "1.5"], "error"),
    ("ot threshold -0.1", [*EXPLAIN, "--method", "ot", "--threshold=-0.1"], "error"),
    ("ot eps 0", [*EXPLAIN, "--method", "ot", "--solver", "sinkhorn", "--eps", "0"], "error"),
    ("ot eps nan", [*EXPLAIN, "--method", "ot", "--solver", "sinkhorn", "--eps", "nan"], "error"),
    ("maxsim layer 99", [*EXPLAIN, "--method", "maxsim", "--layer", "99"], "error"),
    ("maxsim backend nope", [*EXPLAIN, "--method", "maxsim", "--backend", "nope"], "error"),
    # explain-many inputs
    ("pairs file missing", ["explain-many", "{tmp}/no_such.jsonl", *FAST], "error"),
    ("pairs file is a directory", ["explain-many", "{tmp}/a_directory", *FAST], "error"),
    ("pairs file binary", ["explain-many", "{tmp}/binary.bin", *FAST], "error"),
    ("pairs file latin-1", ["explain-many", "{tmp}/latin1.tsv", *FAST], "error"),
    ("pairs file empty", ["explain-many", "{tmp}/empty.jsonl", *FAST], "error"),
    ("pairs file blank lines", ["explain-many", "{tmp}/blank.jsonl", *FAST], "error"),
    ("pairs line without b", ["explain-many", "{tmp}/no_b.jsonl", *FAST], "error"),
    ("pairs tsv three columns", ["explain-many", "{tmp}/three.tsv", *FAST], "error"),
    ("pairs text not a string", ["explain-many", "{tmp}/not_string.jsonl", *FAST], "error"),
    ("pairs line a JSON list", ["explain-many", "{tmp}/list.jsonl", *FAST], "error"),
    ("pairs tsv ok", ["explain-many", "{tmp}/pairs.tsv", *FAST], "ok"),
    ("texts-a only", ["explain-many", "--texts-a", "{tmp}/texts.txt", *FAST], "error"),
    ("texts of unequal length", ["explain-many", "--texts-a", "{tmp}/texts.txt", "--texts-b", "{tmp}/texts3.txt",
                                 *FAST], "error"),
    ("texts-a binary", ["explain-many", "--texts-a", "{tmp}/binary.bin", "--texts-b", "{tmp}/texts.txt", *FAST],
     "error"),
    ("pairs file and texts", [*MANY, "--texts-a", "{tmp}/texts.txt", *FAST], "error"),
    ("output into a missing directory", [*MANY, *FAST, "-o", "{tmp}/missing/out.jsonl"], "error"),
    ("output an existing file as a Parquet folder", [*MANY, *FAST, "-o", "{tmp}/not_a_model"], "error"),
    ("output a Parquet folder", [*MANY, *FAST, "-o", "{tmp}/a_directory"], "ok"),
    ("output a Parquet folder holding parts", [*MANY, *FAST, "-o", "{tmp}/parts"], "error"),
    ("output is the input", [*MANY, *FAST, "-o", "{tmp}/pairs.jsonl"], "error"),
    ("resume without output", [*MANY, *FAST, "--resume"], "error"),
    ("resume from a non-output file", [*MANY, *FAST, "-o", "{tmp}/pairs.tsv", "--resume"], "error"),
    ("job-size 0", [*MANY, *FAST, "--job-size", "0"], "error"),
    ("shard 3/2", [*MANY, *FAST, "--shard", "3/2"], "error"),
    ("shard x", [*MANY, *FAST, "--shard", "x"], "error"),
    ("shard 0/0", [*MANY, *FAST, "--shard", "0/0"], "error"),
    ("shard 1/2", [*MANY, *FAST, "--shard", "1/2"], "ok"),
    ("explain-many bad option", [*MANY, "--method", "maxsim", "--tol", "1e-3"], "error"),
    ("explain-many tol nan", [*MANY, "--tol", "nan"], "error"),
    ("output an empty name", [*MANY, *FAST, "-o", ""], "error"),
    ("html an empty name", [*EXPLAIN, *FAST, "--html", ""], "error"),
    ("html and png the same file", [*EXPLAIN, *FAST, "--html", "{tmp}/same.out", "--png", "{tmp}/same.out"],
     "error"),
    ("html onto the idf corpus", [*EXPLAIN, "--method", "bertscore", "--idf-corpus", "{tmp}/texts.txt", "--html",
                                  "{tmp}/texts.txt"], "error"),
    ("input named like the output's part", ["explain-many", "{tmp}/pairs.jsonl.part", "-o", "{tmp}/pairs.jsonl",
                                            *FAST], "error"),
    ("columns twice", [*MANY, *FAST, "--columns", "a=a,b=b,a=b"], "error"),
    ("columns empty", [*MANY, *FAST, "--columns", ""], "error"),
    ("columns a and b the same", [*MANY, *FAST, "--columns", "a=b"], "error"),
    ("columns unknown key", [*MANY, *FAST, "--columns", "text=a"], "error"),
    ("columns missing column", [*MANY, *FAST, "--columns", "a=query"], "error"),
    ("surrogate in a JSON line", ["explain-many", "{tmp}/surrogate.jsonl", "--method", "maxsim"],
     ("warn", "error rows|not valid Unicode")),
    ("surrogate on the command line", ["explain", "caf\udce9", B, "--method", "maxsim"], "error"),
    ("sinkhorn eps 1e-300", [*EXPLAIN, "--method", "ot", "--solver", "sinkhorn", "--eps", "1e-300"], "error"),
    ("max-length above the model's", [*EXPLAIN, *FAST, "--max-length", "100000"], ("warn", "above the model")),
    ("no command", [], "error"),
    ("unknown command", ["explian", A, B], "error"),
]


def _from_dict(data):
    from simattr import Explanation
    return lambda ex, tmp: Explanation.from_dict(data)


GOOD = {"method": "ij", "matrix": [[0.1, 0.2]], "tokens_a": ["x"], "tokens_b": ["y", "z"], "score": 0.3}


def _ex(**opts):
    return lambda ex, tmp: ex.explain(A, B, **opts)


def _explainer(*args, **kwargs):
    def run(ex, tmp):
        import simattr
        return simattr.Explainer(*args, **kwargs).explain(A, B, **STEPS)
    return run


API = [
    # the explainer
    ("Explainer device nonsense", _explainer(device="nonsense"), "error"),
    ("Explainer device cuda without a GPU", _explainer(device="cuda"), "error"),
    ("Explainer device 3", _explainer(device=3), "error"),
    ("Explainer model missing", _explainer("/no/such/model"), "error"),
    ("Explainer model an int", _explainer(42), "error"),
    ("Explainer dtype a name", _explainer(dtype="float64"), "ok"),
    ("Explainer dtype int8", _explainer(dtype="int8"), "error"),
    ("Explainer dtype torch.int64", _explainer(dtype=__import__("torch").int64), "error"),
    ("Explainer max_length 0", _explainer(max_length=0), "error"),
    # prompts and tasks (docs/models.md)
    ("Explainer prompt a number", _explainer(prompt=3), "error"),
    ("Explainer prompt three values", _explainer(prompt=("q: ", "d: ", "x: ")), "error"),
    ("Explainer prompt_name unknown", _explainer(prompt_name="query"), "error"),
    ("Explainer prompt and prompt_name", _explainer(prompt="q: ", prompt_name="query"), "error"),
    ("Explainer task unknown, no Router", _explainer(task="summary"), "error"),
    ("Explainer include_prompt 'yes'", _explainer(prompt="q: ", include_prompt="yes"), "error"),
    ("Explainer prompt per side", _explainer(prompt=("query: ", "passage: ")), "ok"),
    ("Explainer prompt empty", _explainer(prompt=""), "ok"),
    ("Explainer prompt alone fills the length",
     _explainer(prompt="word " * 600), "error"),
    ("span past the shown tokens (a held prompt not counted)", lambda ex, tmp: __import__("simattr").Explainer(
        prompt="query: ").explain(A, B, units=[(8, 10)], **STEPS), "error"),
    ("span over the shown tokens after a prompt", lambda ex, tmp: __import__("simattr").Explainer(
        prompt="query: ").explain(A, B, units=[(1, 3)], **STEPS), "ok"),
    ("Explainer cache_size -1", _explainer(cache_size=-1), "error"),
    ("Explainer pooling nope", _explainer(pooling="nope"), "error"),
    # texts
    ("text None", lambda ex, tmp: ex.explain(None, B, **STEPS), "error"),
    ("text an int", lambda ex, tmp: ex.explain(3, B, **STEPS), "error"),
    ("text bytes", lambda ex, tmp: ex.explain(b"abc", B, **STEPS), "error"),
    ("text a list", lambda ex, tmp: ex.explain([A], B, **STEPS), "error"),
    ("text empty", lambda ex, tmp: ex.explain("", B, **STEPS), "error"),
    ("text zero-width", lambda ex, tmp: ex.explain("\u200b", B, **STEPS), "error"),
    ("maxsim text empty", lambda ex, tmp: ex.explain("", B, method="maxsim"), "error"),
    ("bertscore text zero-width", lambda ex, tmp: ex.explain(A, "\u200b", method="bertscore"), "error"),
    ("ot text control", lambda ex, tmp: ex.explain(A, "\x07", method="ot"), "error"),
    ("explain_many one empty text", lambda ex, tmp: ex.explain_many([A, ""], [B, B], **STEPS), "error"),
    ("explain_many unequal", lambda ex, tmp: ex.explain_many([A, A], [B, B, B], **STEPS), "error"),
    ("explain_many a string per side", lambda ex, tmp: ex.explain_many(A, B, **STEPS), "ok"),
    ("explain_many texts not strings", lambda ex, tmp: ex.explain_many([A, 3], [B, B], **STEPS), "error"),
    ("explain_many empty", lambda ex, tmp: ex.explain_many([], [], **STEPS), "ok"),
    ("explain_many all pairs empty", lambda ex, tmp: ex.explain_many([], [B], all_pairs=True, **STEPS), "ok"),
    ("emoji", lambda ex, tmp: ex.explain("I love it 😀", B, **STEPS), ("warn", r"\[UNK\]")),
    # methods and options
    ("method nope", _ex(method="nope"), "error"),
    ("option misspelt", _ex(stpes=4), "error"),
    ("option of another method", _ex(method="maxsim", steps=4), "error"),
    ("steps 0", _ex(steps=0), "error"),
    ("steps -3", _ex(steps=-3), "error"),
    ("steps 2.5", _ex(steps=2.5), "error"),
    ("steps True", _ex(steps=True), "error"),
    ("steps 'abc'", _ex(steps="abc"), "error"),
    ("tol 'abc'", _ex(tol="abc"), "error"),
    ("tol 0", _ex(tol=0), "error"),
    ("tol -1", _ex(tol=-1), "error"),
    ("tol nan", _ex(tol=math.nan), "error"),
    ("tol inf", _ex(tol=math.inf), "error"),
    ("max_steps 0", _ex(max_steps=0), "error"),
    ("max_steps 4 under auto, fixed rule", _ex(max_steps=4, quadrature="riemann_midpoint"), "error"),
    ("max_memory inf", _ex(max_memory=math.inf, **STEPS), "error"),
    ("max_memory nan", _ex(max_memory=math.nan, **STEPS), "error"),
    ("max_memory 0", _ex(max_memory=0, **STEPS), "error"),
    ("max_memory '0'", _ex(max_memory="0", **STEPS), "error"),
    ("max_memory -1", _ex(max_memory=-1, **STEPS), "error"),
    ("max_memory '-1GB'", _ex(max_memory="-1GB", **STEPS), "error"),
    ("max_memory True", _ex(max_memory=True, **STEPS), "error"),
    ("max_memory a list", _ex(max_memory=[1], **STEPS), "error"),
    ("max_memory 10 bytes", _ex(max_memory=10, **STEPS), "error"),
    ("max_memory '2GB'", _ex(max_memory="2GB", **STEPS), "ok"),
    ("internal_batch_size 0", _ex(internal_batch_size=0, **STEPS), "error"),
    ("units []", _ex(units=[], **STEPS), "error"),
    ("units [[]]", _ex(units=[[]], **STEPS), "error"),
    ("units out of range", _ex(units=[[0, 99]], **STEPS), "error"),
    ("units negative", _ex(units=[[-1]], **STEPS), "error"),
    ("units overlapping", _ex(units=[[1, 2], [2, 3]], **STEPS), "error"),
    ("units a tuple per side", _ex(units=("token", "word"), **STEPS), "error"),
    ("units nope", _ex(units="nope", **STEPS), "error"),
    ("layer -1", _ex(layer=-1, **STEPS), "error"),
    ("layer 99", _ex(layer=99, **STEPS), "error"),
    ("layer 1.5", _ex(layer=1.5, **STEPS), "error"),
    ("layer '0'", _ex(layer="0", **STEPS), "error"),
    ("reference 123", _ex(reference=123, **STEPS), "error"),
    ("reference wrong-shaped tensor", lambda ex, tmp: ex.explain(A, B, reference=__import__("torch").zeros(3),
                                                                 **STEPS), "error"),
    ("reference empty text", _ex(reference="", **STEPS), "error"),
    ("reference a text", _ex(reference="nothing", **STEPS), "ok"),
    ("reference zero-width text", _ex(reference="\u200b", **STEPS), "error"),
    ("reference the text itself", _ex(reference=A, **STEPS), ("warn", "equals the text itself")),
    ("sim nope", _ex(sim="nope", **STEPS), "error"),
    ("mode nope", _ex(mode="nope", **STEPS), "error"),
    ("bilrp rule nope", _ex(method="bilrp", rule="nope"), "error"),
    ("bilrp bias nope", _ex(method="bilrp", bias="nope"), "error"),
    ("ot threshold 1.5", _ex(method="ot", threshold=1.5), "error"),
    ("ot threshold nan", _ex(method="ot", threshold=math.nan), "error"),
    ("ot eps 0", _ex(method="ot", solver="sinkhorn", eps=0), "error"),
    ("ot max_iter 0", _ex(method="ot", solver="sinkhorn", max_iter=0), "error"),
    ("bertscore baseline (1, 1, 1)", _ex(method="bertscore", baseline=(1, 1, 1)), "error"),
    ("bertscore baseline two numbers", _ex(method="bertscore", baseline=(0.5, 0.5)), "error"),
    ("bertscore baseline inf", _ex(method="bertscore", baseline=(math.inf, 0, 0)), "error"),
    ("bertscore baseline missing file", _ex(method="bertscore", baseline="/no/such/baseline.tsv"), "error"),
    ("bertscore idf a number", _ex(method="bertscore", idf=3), "error"),
    ("bertscore idf empty corpus", _ex(method="bertscore", idf=[]), "error"),
    ("maxsim skiplist a number", _ex(method="maxsim", skiplist=3), "error"),
    ("maxsim backend nope", _ex(method="maxsim", backend="nope"), "error"),
    ("steps a numpy array", _ex(steps=__import__("numpy").array([3])), "error"),
    ("layer a numpy array", _ex(layer=__import__("numpy").array([1]), **STEPS), "error"),
    ("steps a billion", _ex(steps=10 ** 9), "error"),
    ("max_memory 10**400", _ex(max_memory=10 ** 400, **STEPS), "error"),
    ("units of strings", _ex(units=[["a"]], **STEPS), "error"),
    ("units of None", _ex(units=[[None]], **STEPS), "error"),
    ("units of floats", _ex(units=[[1.7, 2.2]], **STEPS), "error"),
    ("units of bools", _ex(units=[[True, 2]], **STEPS), "error"),
    ("units a token twice", _ex(units=[[1, 1, 2]], **STEPS), "error"),
    ("units numpy tuple range", lambda ex, tmp: _same_units(ex), "ok"),
    ("text with a surrogate", lambda ex, tmp: ex.explain("abc \ud800 def", B, **STEPS), "error"),
    ("maxsim text with a surrogate", lambda ex, tmp: ex.explain("abc \ud800", B, method="maxsim"), "error"),
    ("explain_many None", lambda ex, tmp: ex.explain_many(None, [B], method="maxsim"), "error"),
    ("explain_many a number", lambda ex, tmp: ex.explain_many(5, [B], method="maxsim"), "error"),
    ("explain_many a set", lambda ex, tmp: ex.explain_many({A, "a cat"}, [B, B], method="maxsim"), "error"),
    ("explain_many a dict", lambda ex, tmp: ex.explain_many({A: 1}, [B], method="maxsim"), "error"),
    ("explain_many bytes", lambda ex, tmp: ex.explain_many(b"abc", [B], method="maxsim"), "error"),
    ("explain_many generators all pairs", lambda ex, tmp: _generators(ex), "ok"),
    ("bertscore idf weight a string", _ex(method="bertscore", idf={"guitar": "high"}), "error"),
    ("bertscore idf weight nan", _ex(method="bertscore", idf={"guitar": math.nan}), "error"),
    ("bertscore idf key numpy int", _ex(method="bertscore", idf={__import__("numpy").int64(1037): 3.0}), "ok"),
    ("bertscore idf key a float", _ex(method="bertscore", idf={1.5: 3.0}), "error"),
    ("bertscore idf key a tuple", _ex(method="bertscore", idf={(1, 2): 3.0}), "error"),
    ("bertscore idf key not in the vocabulary", _ex(method="bertscore", idf={"zzqqxx": 3.0}), "error"),
    ("bertscore idf empty dict", _ex(method="bertscore", idf={}), "error"),
    ("ot sinkhorn eps 1e-20", _ex(method="ot", solver="sinkhorn", eps=1e-20), "error"),
    ("ot sinkhorn max_iter 1", _ex(method="ot", solver="sinkhorn", max_iter=1), "error"),
    ("reference function of no arguments", _ex(reference=lambda: 0, **STEPS), "error"),
    ("reference a class", _ex(reference=dict, **STEPS), "error"),
    ("reference function raises", _ex(reference=lambda t, x: 1 / 0, **STEPS), "error"),
    ("reference function returns a list", _ex(reference=lambda t, x: [1], **STEPS), "error"),
    ("CallableEncoder without a tokenizer", lambda ex, tmp: __import__("simattr").CallableEncoder(
        None, lambda *a: None, lambda *a: None), "error"),
    ("Explainer tokenizer with a path", _explainer(tokenizer="x"), "error"),
    ("Explainer default steps 0", _explainer(steps=0), "error"),
    ("Explainer default tol nan", _explainer(tol=math.nan), "error"),
    ("method empty string", _ex(method=""), "error"),
    ("method None in options", lambda ex, tmp: ex.explain(A, B, method=3), "error"),
    ("format top None", lambda ex, tmp: _good().format(top=None), "error"),
    ("to_png None", lambda ex, tmp: _good().to_png(None), "error"),
    ("to_html a number", lambda ex, tmp: _good().to_html(3), "error"),
    ("to_png an unknown extension", lambda ex, tmp: _good().to_png(os.path.join(tmp, "x.bmpx")), "error"),
    ("to_png svg", lambda ex, tmp: _good().to_png(os.path.join(tmp, "x.svg")), "ok"),
    ("from_json deeply nested", lambda ex, tmp: __import__("simattr").Explanation.from_json("[" * 100000 +
                                                                                           "]" * 100000), "error"),
    ("from_json NaN score", lambda ex, tmp: __import__("simattr").Explanation.from_json(
        '{"method": "ij", "matrix": [[1]], "tokens_a": ["x"], "tokens_b": ["y"], "score": NaN}'), "error"),
    # results
    ("from_dict empty", _from_dict({}), "error"),
    ("from_dict error a string", _from_dict(dict(GOOD, error="big")), "error"),
    ("from_dict terms of strings", _from_dict(dict(GOOD, terms={"s": "x"})), "error"),
    ("from_dict scores of strings", _from_dict(dict(GOOD, scores={"p": "x"})), "error"),
    ("from_dict steps_used a number", _from_dict(dict(GOOD, steps_used=5)), "error"),
    ("from_dict huge score", _from_dict(dict(GOOD, score=10 ** 400)), "error"),
    ("from_dict huge matrix value", _from_dict(dict(GOOD, matrix=[[10 ** 400, 1.0]])), "error"),
    ("from_dict no tokens", _from_dict(dict(GOOD, tokens_a=[], tokens_b=[], matrix=[])), "error"),
    ("from_dict matrix a string", _from_dict(dict(GOOD, matrix="x")), "error"),
    ("from_dict ragged matrix", _from_dict(dict(GOOD, matrix=[[1.0], [1.0, 2.0]])), "error"),
    ("from_dict matrix not matching tokens", _from_dict(dict(GOOD, matrix=[[1.0, 2.0, 3.0]])), "error"),
    ("from_dict score a string", _from_dict(dict(GOOD, score="high")), "error"),
    ("from_dict tokens not strings", _from_dict(dict(GOOD, tokens_a=[1])), "error"),
    ("from_dict not a dict", _from_dict([1, 2]), "error"),
    ("from_dict ok", _from_dict(GOOD), "ok"),
    ("to_html into a missing directory", lambda ex, tmp: _good().to_html(os.path.join(tmp, "missing", "x.html")),
     "error"),
    ("to_png onto a directory", lambda ex, tmp: _good().to_png(tmp), "error"),
    ("to_html ok", lambda ex, tmp: _good().to_html(os.path.join(tmp, "ok.html")), "ok"),
]


def _same_units(ex):
    """A (start, stop) span of numpy integers is the same range as one of Python integers."""
    import numpy as np
    e1 = ex.explain(A, B, units=[(np.int64(1), np.int64(3))], **STEPS)
    e2 = ex.explain(A, B, units=[(1, 3)], **STEPS)
    assert e1.tokens_a == e2.tokens_a, (e1.tokens_a, e2.tokens_a)


def _generators(ex):
    """Generators of texts are read once, also for all_pairs."""
    rows = ex.explain_many((t for t in [A, "a cat"]), (t for t in [B, "x y", "z"]), method="maxsim", all_pairs=True)
    assert [len(r) for r in rows] == [3, 3]


def _good():
    from simattr import Explanation
    return Explanation.from_dict(GOOD)


CASES = [(name, "cli", what, expect) for name, what, expect in CLI] + \
        [(name, "api", what, expect) for name, what, expect in API]


def run_case(kind, what, tmp: str, explainer):
    """(outcome, detail): outcome "error" (a clear error), "traceback" (any other exception escaped), "ok" (a
    result; detail: the warnings' messages)."""
    import contextlib
    import io
    import warnings

    from simattr import SimattrError
    from simattr.cli import main
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            if kind == "cli":
                argv = [a.replace("{tmp}", tmp) for a in what]
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        code = main(argv)
                    except SystemExit as exc:  # argparse: a usage error
                        code = exc.code
                text = err.getvalue()
                if code == 0:
                    return "ok", [str(m.message) for m in w] + ([text] if text else [])
                if code == 2 and ("error:" in text) and "Traceback" not in text:
                    return "error", text.strip().splitlines()[-1]
                return "traceback", f"exit {code}: {text[-300:]}"
            what(explainer, tmp)
        except SimattrError as exc:
            return "error", str(exc)
        except Exception as exc:  # noqa: BLE001
            return "traceback", f"{type(exc).__name__}: {exc}"
        caught = [str(m.message) for m in w]
    return "ok", caught


def classify(expect, outcome: str, detail) -> str:
    """"clear error", "works", "traceback" or "silent" (a result where an error, or a warning, was due)."""
    import re
    if outcome == "traceback":
        return "traceback"
    if expect == "error":
        return "clear error" if outcome == "error" else "silent"
    if outcome == "error":
        return "refused"  # a legitimate input refused
    if isinstance(expect, tuple):
        return "works" if any(re.search(expect[1], m) for m in detail) else "silent"
    return "works"

