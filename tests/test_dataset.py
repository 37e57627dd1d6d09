"""Explanations at dataset scale: the batch primitive (`explain_batch`), the result schema read back by pandas,
pyarrow and datasets, every input format, Parquet parts with exactly-once resume after SIGKILL, torchrun ranks and
Ray Data — each checked against the single-process result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import simattr
from simattr import ranks, results
from simattr.cli import main
from simattr.inputs import from_text_files, read_pairs

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")

PAIRS = [("a cat sat on the mat", "the dog ran"), ("birds fly south in winter", "a cat"), ("dogs bark", "the moon"),
         ("the sun is hot", "ice is cold"), ("he reads books at night", "she writes poems"), ("rain", "a storm"),
         ("trees grow tall in the forest near the river", "grass is green"), ("cars drive", "a slow train")]


def _by_id(rows):
    return {r["id"]: r for r in rows}


def _same_rows(got, ref, atol=1e-6):
    assert sorted(got) == sorted(ref)
    for i, r in ref.items():
        g = got[i]
        assert g["status"] == r["status"] and g["tokens_a"] == r["tokens_a"], i
        if r["status"] == "ok":
            np.testing.assert_allclose(np.array(g["matrix"], dtype=float), np.array(r["matrix"], dtype=float),
                                       atol=atol)


# ------------------------------------------------------------------ the batch primitive
def test_explain_batch_makes_error_rows_and_explains_the_rest(explainer):
    long = " ".join(["word"] * 600)
    batch = {"id": ["p0", "p1", "p2", "p3", "p4"], "a": ["a cat", "", long, 7, "birds fly"],
             "b": ["a dog", "x", "y", "z", "planes fly"]}
    t = explainer.explain_batch(batch, "bilrp")
    assert t.schema.equals(results.schema(pa.string()), check_metadata=False)
    rows = t.to_pylist()
    assert [(r["id"], r["status"]) for r in rows] == [("p0", "ok"), ("p1", "error"), ("p2", "error"),
                                                     ("p3", "error"), ("p4", "ok")]
    assert "empty" in rows[1]["reason"] and "maximum" in rows[2]["reason"] and "not a string" in rows[3]["reason"]
    for r, (a, b) in ((rows[0], ("a cat", "a dog")), (rows[4], ("birds fly", "planes fly"))):
        one = explainer.explain(a, b, method="bilrp")
        np.testing.assert_allclose(np.array(r["matrix"]), one.matrix, atol=1e-6)
        # float32 rounding: the batch packs its short texts into shared launches, the single pair runs alone
        assert r["score"] == pytest.approx(one.score, abs=1e-6) and r["error"] == pytest.approx(one.error, rel=1e-5, abs=1e-7)
        back = simattr.Explanation.from_row(r)
        np.testing.assert_allclose(back.matrix, one.matrix, atol=1e-6)
        assert back.settings == json.loads(json.dumps(one.settings))
    with pytest.raises(simattr.SimattrError, match="is an error row: text a: text is empty"):
        simattr.Explanation.from_row(rows[1])
    with pytest.raises(simattr.SimattrError, match="does not take option 'steps'"):  # an option: the batch's mistake
        explainer.explain_batch(batch, "bilrp", steps=4)


def test_explain_batch_nan_mid_job_is_that_pair_s_row(explainer):
    """A pair whose computation fails inside the shared job becomes an error row; the others are still explained."""
    calls = {}
    layers = explainer.encoder_a.model.encoder.layer

    def poison(mod, inp, out):
        if not calls.get("poison"):
            return out
        return (out[0] * float("nan"),) + tuple(out[1:]) if isinstance(out, tuple) else out * float("nan")
    hook = layers[2].register_forward_hook(poison)
    try:
        ok = explainer.explain_batch({"a": ["a cat", "dogs bark"], "b": ["a dog", "the moon"]}, "maxsim")
        calls["poison"] = True
        bad = explainer.explain_batch({"a": ["a cat", "dogs bark"], "b": ["a dog", "the moon"]}, "maxsim")
    finally:
        hook.remove()
    assert [r["status"] for r in ok.to_pylist()] == ["ok", "ok"]
    assert [r["status"] for r in bad.to_pylist()] == ["error", "error"]
    assert all("NaN or Inf" in r["reason"] for r in bad.to_pylist())


@pytest.mark.parametrize("kind", ["dict", "pandas", "arrow", "datasets"])
def test_explain_batch_reads_every_batch_type_with_column_names(explainer, kind):
    data = {"qid": [10, 11], "query": ["a cat", "birds fly"], "passage": ["a dog", "planes fly"]}
    if kind == "pandas":
        data = pd.DataFrame(data)
    elif kind == "arrow":
        data = pa.table(data)
    elif kind == "datasets":
        datasets = pytest.importorskip("datasets")
        data = datasets.Dataset.from_dict(data)
    t = explainer.explain_batch(data, "maxsim", columns={"id": "qid", "a": "query", "b": "passage"})
    assert t.column("id").to_pylist() == [10, 11] and t.column("status").to_pylist() == ["ok", "ok"]
    with pytest.raises(simattr.SimattrError, match="no column 'a' for text a"):
        explainer.explain_batch(data, "maxsim")


# ------------------------------------------------------------------ inputs
def test_every_input_format_gives_the_same_pairs(tmp_path):
    ids = [f"q{k}" for k in range(3)]
    a, b = ["a cat", "birds, fly", 'he said "hi"'], ["a dog", "planes\tfly", "x"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"qid": i, "query": x, "doc": y}) + "\n"
                                              for i, x, y in zip(ids, a, b)), encoding="utf-8")
    pd.DataFrame({"qid": ids, "query": a, "doc": b}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"qid": ids, "query": a, "doc": b}).to_csv(tmp_path / "p2.tsv", index=False, sep="\t")
    pq.write_table(pa.table({"qid": ids, "query": a, "doc": b}), tmp_path / "p.parquet")
    os.makedirs(tmp_path / "folder")
    pq.write_table(pa.table({"qid": ids[:2], "query": a[:2], "doc": b[:2]}), tmp_path / "folder" / "0.parquet")
    pq.write_table(pa.table({"qid": ids[2:], "query": a[2:], "doc": b[2:]}), tmp_path / "folder" / "1.parquet")
    columns = {"id": "qid", "a": "query", "b": "doc"}
    sources = ["p.jsonl", "p.csv", "p2.tsv", "p.parquet", "folder"]
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"qid": ids, "query": a, "doc": b}).save_to_disk(str(tmp_path / "saved"))
    sources.append("saved")
    for name in sources:
        got = read_pairs(str(tmp_path / name), columns)
        assert (got.ids, got.a, got.b) == (ids, a, b), name
    (tmp_path / "plain.tsv").write_text("a cat\ta dog\nbirds\tplanes\n", encoding="utf-8")
    plain = read_pairs(str(tmp_path / "plain.tsv"))  # headerless, no ids: row numbers
    assert (plain.ids, plain.a, plain.b) == ([0, 1], ["a cat", "birds"], ["a dog", "planes"])
    (tmp_path / "dup.jsonl").write_text('{"id": 1, "a": "x", "b": "y"}\n{"id": 1, "a": "x", "b": "z"}\n')
    with pytest.raises(simattr.SimattrError, match="the id 1 occurs twice"):
        read_pairs(str(tmp_path / "dup.jsonl"))
    with pytest.raises(simattr.SimattrError, match="no column 'passage'"):
        read_pairs(str(tmp_path / "p.parquet"), dict(columns, b="passage"))
    (tmp_path / "ta.txt").write_text("q1\nq2\n")
    (tmp_path / "tb.txt").write_text("d1\nd2\nd3\n")
    grid = from_text_files(str(tmp_path / "ta.txt"), str(tmp_path / "tb.txt"), all_pairs=True)
    assert grid.ids == list(range(6)) and list(zip(grid.a, grid.b))[4] == ("q2", "d2")


# ------------------------------------------------------------------ the rank's share
def test_balanced_shares_are_disjoint_complete_and_balanced():
    rng = np.random.default_rng(0)
    costs = list(rng.pareto(1.2, 500) * 100 + 1)
    for world in (1, 2, 3, 7):
        shares = [ranks.balanced_share(costs, r, world) for r in range(world)]
        assert sorted(k for s in shares for k in s) == list(range(500))
        assert shares == [ranks.balanced_share(costs, r, world) for r in range(world)]  # deterministic
        loads = [sum(costs[k] for k in s) for s in shares]
        contiguous = [sum(costs[r * 500 // world:(r + 1) * 500 // world]) for r in range(world)]
        assert max(loads) <= max(contiguous) + 1e-9
        assert max(loads) - min(loads) <= max(costs) + 1e-9  # within one pair of each other


def test_rank_from_the_launchers_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    assert ranks.from_environment() == ranks.Rank()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert ranks.from_environment() == ranks.Rank(3, 4, 0, "slurm")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's (and Accelerate's) variables come first
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks.from_environment() == ranks.Rank(1, 2, 1, "torchrun")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(simattr.SimattrError, match="rank 5 of world size 2"):
        ranks.from_environment()


# ------------------------------------------------------------------ explain-many into Parquet parts
def _pairs_file(tmp_path, pairs=PAIRS):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{k}", "a": a, "b": b}) + "\n" for k, (a, b) in enumerate(pairs)),
                    encoding="utf-8")
    return path


OPTS = ["--method", "bilrp", "--job-size", "2", "--quiet"]


def _read_parts(folder):
    return pq.read_table(str(folder)).to_pylist()


def test_parquet_parts_read_back_with_pandas_pyarrow_and_datasets(tmp_path, capsys):
    pairs = _pairs_file(tmp_path, PAIRS[:5] + [("", "x")])
    out = tmp_path / "out"
    assert main(["explain-many", str(pairs), "-o", str(out), "--method", "bilrp", "--job-size", "2"]) == 0
    assert "6 pairs, 0 already written, 6 explained now: 5 ok, 1 error rows" in capsys.readouterr().err
    parts = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
    assert parts == [f"part-r0000-{k:06d}.parquet" for k in range(3)]
    table = pq.read_table(str(out))
    meta = results.table_metadata(pq.read_schema(str(out / parts[0])))
    assert meta["settings"]["method"] == "bilrp" and meta["settings_hash"] == table.column("settings_hash")[0].as_py()
    df = pd.read_parquet(out)
    assert sorted(df["id"]) == [f"r{k}" for k in range(6)] and (df["status"] == "error").sum() == 1
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(out / "*.parquet"), split="train")
    rows = {"pandas": [r.to_dict() for _, r in df.iterrows()], "datasets": list(ds), "arrow": table.to_pylist()}
    ex = simattr.Explainer()
    one = ex.explain(PAIRS[3][0], PAIRS[3][1], method="bilrp")
    for kind, rs in rows.items():
        r = next(r for r in rs if r["id"] == "r3")
        e = simattr.Explanation.from_row(r)
        np.testing.assert_allclose(e.matrix, one.matrix, atol=1e-6, err_msg=kind)
        assert e.tokens_a == one.tokens_a and e.error == pytest.approx(one.error, rel=1e-5, abs=1e-7)  # rounding
    assert main(["explain-many", str(pairs), "-o", str(out)] + OPTS) == 2  # parts there, no --resume
    assert "already holds 3 part file(s)" in capsys.readouterr().err
    assert main(["explain-many", str(pairs), "-o", str(out), "--resume", "--method", "maxsim"]) == 2
    assert "written by another job" in capsys.readouterr().err


def test_sigkill_at_several_moments_then_resume_gives_every_id_once(tmp_path):
    pairs = _pairs_file(tmp_path)
    full, out = tmp_path / "full", tmp_path / "out"
    assert main(["explain-many", str(pairs), "-o", str(full)] + OPTS) == 0
    ref = _by_id(_read_parts(full))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "simattr", "explain-many", str(pairs), "-o", str(out), "--resume"] + OPTS
    for parts_before_kill in (1, 2, 3):  # SIGKILL once k parts are written (mid-part, while the next one runs)
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and len([p for p in os.listdir(out) if p.startswith("part-")]) >= parts_before_kill:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(cmd, env=env).returncode == 0
    got = _read_parts(out)
    assert sorted(r["id"] for r in got) == sorted(ref)  # every id exactly once
    _same_rows(_by_id(got), ref)
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_two_torchrun_ranks_equal_one_process(tmp_path):
    pairs = _pairs_file(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["explain-many", str(pairs), "-o", str(one)] + OPTS) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
                          "-m", "simattr", "explain-many", str(pairs), "-o", str(two)] + OPTS,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    parts = sorted(p for p in os.listdir(two) if p.endswith(".parquet"))
    assert {p[:10] for p in parts} == {"part-r0000", "part-r0001"}  # each rank wrote its own parts
    got = _read_parts(two)
    assert len(got) == len(PAIRS)  # the union is every pair once
    _same_rows(_by_id(got), _by_id(_read_parts(one)))


def test_ray_data_actors_equal_one_process(tmp_path):
    ray = pytest.importorskip("ray")
    from simattr.integrations.ray import RayExplainer
    items = [{"id": k, "a": a, "b": b} for k, (a, b) in enumerate(PAIRS[:5] + [("", "x")])]
    ex = simattr.Explainer()
    ref = _by_id(ex.explain_batch({c: [i[c] for i in items] for c in ("id", "a", "b")}, "bilrp").to_pylist())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ds = ray.data.from_items(items)
        out = ds.map_batches(RayExplainer, fn_constructor_kwargs={"method": "bilrp"}, concurrency=1, batch_size=2,
                             batch_format="pyarrow").take_all()
        with pytest.raises(Exception, match="needs an id column"):
            ray.data.from_items([{"a": "x", "b": "y"}]).map_batches(
                RayExplainer, fn_constructor_kwargs={"method": "maxsim"}, concurrency=1,
                batch_format="pyarrow").take_all()
    finally:
        ray.shutdown()
    got = {r["id"]: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()} for r in out}
    _same_rows(got, ref)
    assert got[5]["status"] == "error"
    assert "simattr.integrations.ray" not in sys.modules or "ray" in sys.modules  # imported here, by the test


def test_import_simattr_imports_no_engine():
    code = "import sys, simattr; print(any(m in sys.modules for m in ('ray', 'pyarrow', 'datasets', 'pandas')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
