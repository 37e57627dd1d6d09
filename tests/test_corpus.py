"""Corpus-level evidence (`simattr.corpus.report`, `simattr report`): its aggregates equal a pandas computation on
the same rows (word merging done by hand here), and the primer's negation check runs with one command."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from simattr import results
from simattr.cli import main
from simattr.corpus import report

PAIRS = [("The cat is on the mat.", "The cat is not on the mat."), ("He likes coffee.", "He does not like coffee."),
         ("The shop is open today.", "The shop is not open today."), ("The cat is on the mat.", "A cat sits on a mat."),
         ("He likes coffee.", "He enjoys coffee."), ("The shop is open today.", "The store is open today.")]
SPECIAL = {"[CLS]", "[SEP]"}


def _words(tokens, values_axis_len):
    """Word groups of WordPiece tokens by hand: '##' pieces join the word before; [CLS]/[SEP] dropped."""
    groups, labels = [], []
    for k, t in enumerate(tokens):
        if t in SPECIAL:
            continue
        if t.startswith("##") and groups:
            groups[-1].append(k)
            labels[-1] += t[2:]
        else:
            groups.append([k])
            labels.append(t.lower())
    return groups, labels


@pytest.fixture(scope="module")
def rows(explainer):
    es = explainer.explain_many([a for a, _ in PAIRS], [b for _, b in PAIRS], method="bilrp")
    return [results.ok_row(k, e) for k, e in enumerate(es)]


def test_aggregates_equal_pandas_on_the_same_rows(rows):
    rep = report(rows, {"negation": ["not", "no", "never"]})
    records, words = [], []
    for r in rows:
        M = np.asarray(r["matrix"], dtype=float)
        ga, la = _words(r["tokens_a"], M.shape[0])
        gb, lb = _words(r["tokens_b"], M.shape[1])
        W = np.array([[M[np.ix_(x, y)].sum() for y in gb] for x in ga])
        records += [(a, b, W[i, j]) for i, a in enumerate(la) for j, b in enumerate(lb)]
        words += list(zip(la, W.sum(1))) + list(zip(lb, W.sum(0)))
    df = pd.DataFrame(records, columns=["a", "b", "v"]).groupby(["a", "b"])["v"].agg(["sum", "count"])
    for p in rep.word_pairs:
        assert p["sum"] == pytest.approx(df.loc[(p["a"], p["b"]), "sum"], abs=1e-5)
        assert p["count"] == df.loc[(p["a"], p["b"]), "count"]
    assert len(rep.word_pairs) == len(df)
    dw = pd.DataFrame(words, columns=["w", "v"]).groupby("w")["v"].agg(["sum", "count", "mean"])
    for w in rep.words:
        assert w["sum"] == pytest.approx(dw.loc[w["word"], "sum"], abs=1e-5)
        assert w["mean"] == pytest.approx(dw.loc[w["word"], "mean"], abs=1e-5)
    neg = rep.classes["negation"]
    assert neg["occurrences"] == 3 and neg["pairs_with"] == 3
    assert neg["contribution_sum"] == pytest.approx(dw.loc["not", "sum"], abs=1e-5)
    other = dw.drop(index="not")
    assert neg["mean_other_word"] == pytest.approx(other["sum"].sum() / other["count"].sum(), abs=1e-6)
    scores = [r["score"] for r in rows]
    assert neg["mean_score_contrasting"] == pytest.approx(np.mean(scores[:3]))
    assert neg["mean_score_without"] == pytest.approx(np.mean(scores[3:]))
    assert len(rep.errors) == len(rows)


def test_the_negation_check_is_one_command(rows, tmp_path, capsys):
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = tmp_path / "report.html"
    assert main(["report", str(path), "--class", "negation=not,no,never", "-o", str(html)]) == 0
    out = capsys.readouterr().out
    assert "class 'negation'" in out and "mean contribution per occurrence" in out
    page = html.read_text()
    assert "Word classes" in page and "data:image/png;base64," in page
    assert main(["report", str(path), "--class", "negation"]) == 2
    assert "--class takes NAME=WORD" in capsys.readouterr().err
