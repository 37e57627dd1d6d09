import json
import subprocess
import sys

import numpy as np
import pytest

from simattr import Explanation, SimattrError, results
from simattr.cli import main


def test_cli_json(capsys):
    assert main(["explain", "a cat sat", "the dog ran", "--steps", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("method", "score", "error", "terms", "tokens_a", "tokens_b", "matrix", "settings"):
        assert key in out
    assert out["method"] == "ij" and out["settings"]["steps"] == 8
    assert len(out["matrix"]) == len(out["tokens_a"]) and len(out["matrix"][0]) == len(out["tokens_b"])


def test_cli_text_report(capsys):
    assert main(["explain", "a cat sat", "the dog ran", "--steps", "auto", "--tol", "1e-2", "--units", "word", "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "score" in out and "completeness error" in out and "strongest" in out


def test_cli_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "triton" in info and "extension" in info and "reason" in info["triton"]
    con = info["contraction"]  # every contraction backend with a reason, and what auto picks per device
    assert all("reason" in con[b] and "available" in con[b] for b in ("torch", "cpp", "triton", "cuda"))
    assert con["torch"]["available"] and con["auto_cpu"] in ("cpp", "torch")
    assert con["cpp"]["available"] == (con["auto_cpu"] == "cpp")


def test_cli_info_text_and_contraction_option(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "contraction auto_cpu" in out and "maxsim auto_cpu" in out
    assert main(["explain", "a cat", "a dog", "--method", "ij", "--mode", "reverse", "--steps", "1", "--layer", "5",
                 "--contraction", "torch", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["contraction"] for p in data["plans"]] == ["torch", "torch"]


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "simattr.cli", "explain", "hi there", "hello", "--steps", "4"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "score" in r.stdout


def _rows(text: str) -> list:
    return [json.loads(ln) for ln in text.splitlines()]


def test_cli_explain_many_pairs_file(tmp_path, capsys, explainer):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"a": "a cat sat", "b": "the dog ran"}\n\n{"text_a": "a cat sat", "text_b": "cats sleep"}\n',
                     encoding="utf-8")
    assert main(["explain-many", str(pairs), "--steps", "3", "--job-size", "1"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(d["id"], d["status"]) for d in rows] == [(0, "ok"), (1, "ok")]
    one = explainer.explain("a cat sat", "cats sleep", steps=3)
    np.testing.assert_allclose(np.array(rows[1]["matrix"]), one.matrix, atol=1e-6)
    back = results.from_row(rows[1])  # a row read back
    assert back.tokens_a == one.tokens_a and back.settings["steps"] == 3 and back.extras["id"] == 1
    np.testing.assert_allclose(back.matrix, one.matrix, atol=1e-6)
    assert back.total == pytest.approx(rows[1]["total"], abs=1e-6) and back.error == pytest.approx(one.error, abs=1e-6)
    again = Explanation.from_json(one.to_json())
    assert again.to_dict() == one.to_dict()
    with pytest.raises(SimattrError, match="not an explanation"):
        Explanation.from_dict({"method": "ij"})
    bad = tmp_path / "bad.tsv"
    bad.write_text("only one column\n", encoding="utf-8")
    assert main(["explain-many", str(bad)]) == 2
    assert "bad.tsv:1" in capsys.readouterr().err


def test_cli_explain_many_grid(tmp_path, capsys):
    qa, qb, out = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "out.jsonl"
    qa.write_text("a cat\ndogs\n", encoding="utf-8")
    qb.write_text("the dog\ncats sleep\nbirds\n", encoding="utf-8")
    assert main(["explain-many", "--texts-a", str(qa), "--texts-b", str(qb), "--all-pairs", "--method", "bilrp",
                 "-o", str(out)]) == 0
    rows = _rows(out.read_text(encoding="utf-8"))
    assert [d["id"] for d in rows] == list(range(6))  # row-major: id = i * len(b) + j
    texts = [(results.from_row(d).tokens_a[1], results.from_row(d).tokens_b[1]) for d in rows]
    assert texts == [(a, b) for a in ("a", "dogs") for b in ("the", "cats", "birds")]
    assert all(d["method"] == "bilrp" and json.loads(d["details"])["extras"]["job"]["pairs"] == 6 for d in rows)
    assert main(["explain-many", "--texts-a", str(qa), "--texts-b", str(qb)]) == 2  # 2 vs 3 lines, no grid
    assert "equal numbers" in capsys.readouterr().err
    assert main(["explain-many", "--texts-a", str(qa), "--texts-b", str(qb), "--method", "bilrp", "--steps", "2",
                 "--all-pairs"]) == 2
    assert "does not take option 'steps'" in capsys.readouterr().err


def test_cli_explain_many_resume_and_shards(tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\n" for a, b in [("a cat", "the dog"), ("dogs", "a cat"), ("birds", "cats"),
                                                        ("a cat", "birds")]), encoding="utf-8")
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    opts = ["--method", "bilrp", "--job-size", "2"]
    assert main(["explain-many", str(pairs), "-o", str(full), "--progress"] + opts) == 0
    err = capsys.readouterr().err
    assert "simattr: 4/4 pairs" in err and "4 pairs, 0 already written, 4 explained now: 4 ok" in err
    lines = full.read_text(encoding="utf-8").splitlines()
    assert [json.loads(ln)["id"] for ln in lines] == [0, 1, 2, 3]
    # a run killed after two pairs and half a line: resume drops the cut line and appends the rest
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:40], encoding="utf-8")
    assert main(["explain-many", str(pairs), "-o", str(out), "--resume"] + opts) == 0
    assert "2 already written, 2 explained now" in capsys.readouterr().err
    got = _rows(out.read_text(encoding="utf-8"))
    assert [d["id"] for d in got] == [0, 1, 2, 3]
    for d, ref in zip(got, map(json.loads, lines)):
        np.testing.assert_allclose(np.array(d["matrix"]), np.array(ref["matrix"]), atol=1e-6)
    assert main(["explain-many", str(pairs), "-o", str(out), "--resume"] + opts) == 0  # nothing left to do
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    # shards: disjoint, together every pair once, global ids
    seen = []
    for k in range(3):
        shard = tmp_path / f"shard{k}.jsonl"
        assert main(["explain-many", str(pairs), "-o", str(shard), "--shard", f"{k}/3"] + opts) == 0
        seen += [json.loads(ln)["id"] for ln in shard.read_text(encoding="utf-8").splitlines()]
    assert sorted(seen) == [0, 1, 2, 3]
    assert main(["explain-many", str(pairs), "--shard", "3/3"] + opts) == 2
    assert "--shard" in capsys.readouterr().err
    assert main(["explain-many", str(pairs), "--resume"] + opts) == 2
    assert "--resume needs --output" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    assert main(["explain-many", str(pairs), "-o", str(bad), "--resume"] + opts) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_cli_explain_many_bad_pairs_become_error_rows(tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    long = " ".join(["word"] * 600)  # over the model's maximum length
    pairs.write_text(f"a cat\tthe dog\n{long}\ta cat\ndogs\tcats\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["explain-many", str(pairs), "-o", str(out), "--method", "bilrp"]) == 0  # the job finishes
    assert "2 ok, 1 error rows" in capsys.readouterr().err
    rows = _rows(out.read_text(encoding="utf-8"))
    assert [(d["id"], d["status"]) for d in rows] == [(0, "ok"), (1, "error"), (2, "ok")]
    assert "over the model's maximum" in rows[1]["reason"] and rows[1]["matrix"] is None
    # resume counts the error row as done
    assert main(["explain-many", str(pairs), "-o", str(out), "--method", "bilrp", "--resume"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3


def test_cli_faithfulness(capsys):
    assert main(["explain", "a cat sat", "the dog ran", "--steps", "4", "--json", "--faithfulness"]) == 0
    f = json.loads(capsys.readouterr().out)["faithfulness"]
    assert set(f) >= {"pearson", "spearman", "units_pearson", "deletion_auc"}
    assert set(f["deletion_auc"]) == {"most", "least", "random"}
    assert main(["explain", "a cat sat", "the dog ran", "--method", "maxsim", "--faithfulness"]) == 0
    assert "faithfulness (maxsim)" in capsys.readouterr().out


def test_cli_explain_many_faithfulness(tmp_path, capsys):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"a": "a cat sat", "b": "the dog ran"}\n{"a": "a red car", "b": "a blue bike"}\n')
    assert main(["explain-many", str(pairs), "--method", "bilrp", "--faithfulness"]) == 0
    rows = [results.from_row(d) for d in _rows(capsys.readouterr().out)]
    assert len(rows) == 2 and all("pearson" in e.extras["faithfulness"] for e in rows)
    assert all(e.extras["faithfulness"]["settings"]["method"] == "bilrp" for e in rows)


def test_cli_show_renders_saved_explanations(tmp_path, capsys):
    one = tmp_path / "one.json"
    assert main(["explain", "a cat sat", "the dog ran", "--method", "maxsim", "--json"]) == 0
    one.write_text(capsys.readouterr().out, encoding="utf-8")
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(one.read_text()), indent=2), encoding="utf-8")
    for source in (one, pretty):
        assert main(["show", str(source), "--html", str(tmp_path / "one.html")]) == 0
        assert "method: maxsim" in capsys.readouterr().out and (tmp_path / "one.html").exists()
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"id": "x", "a": "a cat", "b": "a dog"}\n{"id": "y", "a": "", "b": "z"}\n', encoding="utf-8")
    for out in (tmp_path / "rows.jsonl", tmp_path / "parts"):
        assert main(["explain-many", str(pairs), "--method", "bilrp", "-o", str(out), "--quiet"]) == 0
        assert main(["show", str(out), "--id", "x", "--png", str(tmp_path / "x.png"), "--top", "3"]) == 0
        assert "method: bilrp" in capsys.readouterr().out and (tmp_path / "x.png").stat().st_size > 0
        assert main(["show", str(out), "--id", "y"]) == 2
        assert "is an error row: text a: text is empty" in capsys.readouterr().err
        assert main(["show", str(out), "--id", "nope"]) == 2
        assert "no row with id 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("not json\n", encoding="utf-8")
    assert main(["show", str(bad)]) == 2
    assert "neither a JSON explanation nor JSON lines" in capsys.readouterr().err
