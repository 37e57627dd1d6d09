"""Every unusual or hostile input of tests/hostile_cases.py gives a clear error or a result as stated there (never
a traceback, never a silent result); and the faults a long job meets — NaN from a layer, running out of memory in a
chunk, SIGKILL, a second writer, a full disk, Ctrl-C, a resume of another job — are survived or reported, with
nothing written lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import simattr
from simattr import engine
from simattr.cli import main

from tests.hostile_cases import CASES, classify, files, run_case

A, B = "A man is playing a guitar.", "Someone plays an instrument."


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.mark.parametrize("name,kind,what,expect", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name, kind, what, expect, explainer, tmp_path):
    files(str(tmp_path))
    outcome, detail = run_case(kind, what, str(tmp_path), explainer)
    verdict = classify(expect, outcome, detail)
    assert verdict in ("clear error", "works"), f"{name}: {verdict}: {detail}"


# ------------------------------------------------------------------ NaN from a layer: the same error everywhere
@pytest.mark.parametrize("method", ["ij", "bilrp", "maxsim", "bertscore", "ot"])
def test_nan_from_a_layer_is_a_numerical_error_for_every_method(explainer, method):
    layers = explainer.encoder_a.model.encoder.layer
    hook = layers[len(layers) // 2].register_forward_hook(
        lambda mod, inp, out: (out[0] * float("nan"),) + tuple(out[1:]) if isinstance(out, tuple)
        else out * float("nan"))
    opts = {"steps": 2} if method == "ij" else {}
    try:
        with pytest.raises(simattr.NumericalError, match="NaN or Inf"):
            explainer.explain(A, B, method=method, **opts)
    finally:
        hook.remove()
    assert np.isfinite(explainer.explain(A, B, method=method, **opts).matrix).all()  # the model is as it was


# ------------------------------------------------------------------ out of memory inside a chunk
def _oom_above(monkeypatch, limit: int, calls: list):
    """Every batched JVP with more than `limit` tangents x nodes raises torch.OutOfMemoryError, as a GPU would."""
    real = engine._batched_jvp

    def fake(f, xs, tangents):
        calls.append(tangents.shape[0] * tangents.shape[1])
        if tangents.shape[0] * tangents.shape[1] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(f, xs, tangents)
    monkeypatch.setattr(engine, "_batched_jvp", fake)


def test_out_of_memory_in_a_chunk_halves_the_chunks_and_gives_the_same_matrix(explainer, monkeypatch):
    ref = explainer.explain(A, B, steps=8, mode="forward")
    calls = []
    _oom_above(monkeypatch, 4, calls)
    got = explainer.explain(A, B, steps=8, mode="forward")
    assert max(calls) > 4 and all(c <= 4 for c in calls[-3:])  # it failed, then ran in smaller chunks
    np.testing.assert_allclose(got.matrix, ref.matrix, rtol=1e-5, atol=1e-7)
    retried = [p for p in got.extras["plans"] if p.get("memory_retries")]
    assert retried and "out of memory: chunks halved" in retried[0]["reason"]


def test_out_of_memory_with_the_smallest_chunk_is_a_clear_error(explainer, monkeypatch):
    _oom_above(monkeypatch, 0, [])
    with pytest.raises(simattr.SimattrError, match="out of memory .* chunks of one tangent at one path node"):
        explainer.explain(A, B, steps=4, mode="forward")


def test_other_runtime_errors_are_not_taken_for_out_of_memory(explainer, monkeypatch):
    def broken(f, xs, tangents):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(engine, "_batched_jvp", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        explainer.explain(A, B, steps=4, mode="forward")


# ------------------------------------------------------------------ explain-many: kills, writers, disks, resumes
PAIRS = [("a cat sat on the mat", "the dog ran"), ("birds fly south", "a cat"), ("dogs bark", "the moon"),
         ("the sun is hot", "ice is cold"), ("he reads books", "she writes poems"), ("rain falls", "a storm"),
         ("trees grow", "grass is green"), ("cars drive fast", "a slow train")]
OPTS = ["--method", "bilrp", "--job-size", "2"]


def _pairs_file(tmp_path, pairs=PAIRS):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    return path


def _records(path):
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def test_resume_refuses_another_job_and_keeps_the_output(tmp_path, capsys):
    pairs = _pairs_file(tmp_path, PAIRS[:3])
    out = tmp_path / "out.jsonl"
    assert main(["explain-many", str(pairs), "-o", str(out)] + OPTS) == 0
    before = out.read_bytes()
    assert len({d["settings_hash"] for d in _records(out)}) == 1
    for other in (["--method", "maxsim"], ["--method", "bilrp", "--layer", "1"], ["--method", "ij", "--steps", "2"]):
        assert main(["explain-many", str(pairs), "-o", str(out), "--resume"] + other) == 2
        assert "written by another job" in capsys.readouterr().err
    changed = _pairs_file(tmp_path / "..", PAIRS[1:4])  # another input, same settings
    assert main(["explain-many", str(changed), "-o", str(out), "--resume"] + OPTS) == 2
    assert "written by another job" in capsys.readouterr().err
    assert out.read_bytes() == before  # refused resumes change nothing
    assert main(["explain-many", str(pairs), "-o", str(out), "--resume"] + OPTS) == 0  # the same job: nothing to do
    assert out.read_bytes() == before


def test_a_second_writer_is_refused(tmp_path, capsys):
    import fcntl
    pairs = _pairs_file(tmp_path, PAIRS[:2])
    out = tmp_path / "out.jsonl"
    with open(str(out) + ".part", "a+b") as held:  # another process writing this output holds the lock
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for extra in ([], ["--resume"]):
            assert main(["explain-many", str(pairs), "-o", str(out)] + OPTS + extra) == 2
            assert "another simattr explain-many is writing" in capsys.readouterr().err
    assert not out.exists()
    assert main(["explain-many", str(pairs), "-o", str(out)] + OPTS) == 0  # the lock is gone with its holder


def test_two_processes_on_one_output_give_one_complete_file(tmp_path):
    pairs = _pairs_file(tmp_path)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "simattr", "explain-many", str(pairs), "-o", str(out)] + OPTS
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results  # one after the other, or the second refused
    if codes == [0, 2]:
        assert any("another simattr explain-many is writing" in err for _, err in results)
    assert [d["id"] for d in _records(out)] == list(range(len(PAIRS)))


def test_sigkill_then_resume_gives_the_full_result(tmp_path):
    pairs = _pairs_file(tmp_path)
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert main(["explain-many", str(pairs), "-o", str(full)] + OPTS) == 0
    ref = {d["id"]: d for d in _records(full)}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "simattr", "explain-many", str(pairs), "-o", str(out)] + OPTS
    part = tmp_path / "out.jsonl.part"
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill it once some pairs are written
        if part.exists() and part.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() or out.read_bytes() == full.read_bytes()  # OUT is only ever the finished file
    for _ in range(2):  # resume twice: the second finds nothing to do
        assert main(["explain-many", str(pairs), "-o", str(out), "--resume"] + OPTS) == 0
    got = _records(out)
    assert [d["id"] for d in got] == list(range(len(PAIRS)))
    for d in got:
        np.testing.assert_allclose(d["matrix"], ref[d["id"]]["matrix"], atol=1e-6)
    assert not part.exists()


class _FullDisk:
    """A file whose writes fail with ENOSPC after `room` lines (the first failing write lands half a line)."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data: bytes):
        import errno
        if self.room == 0:
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_a_full_disk_leaves_the_previous_output_intact(tmp_path, monkeypatch, capsys):
    from simattr import outputs
    pairs = _pairs_file(tmp_path, PAIRS[:4])
    out = tmp_path / "out.jsonl"
    assert main(["explain-many", str(pairs), "-o", str(out)] + OPTS) == 0
    before = out.read_bytes()
    enter = outputs.JobOutput.__enter__

    def on_a_small_disk(self):
        enter(self)
        self.fh = _FullDisk(self.fh, room=1)  # one batch of two rows fits
        return self
    monkeypatch.setattr(outputs.JobOutput, "__enter__", on_a_small_disk)
    assert main(["explain-many", str(pairs), "-o", str(out), "--method", "maxsim", "--job-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "is unchanged" in err and "Traceback" not in err
    assert out.read_bytes() == before  # the previous output is intact
    part = tmp_path / "out.jsonl.part"
    assert part.read_bytes().count(b"\n") >= 2  # the first batch's two lines kept, then a cut line
    monkeypatch.undo()
    assert main(["explain-many", str(pairs), "-o", str(out), "--method", "maxsim", "--job-size", "2",
                 "--resume"]) == 0
    assert [d["id"] for d in _records(out)] == [0, 1, 2, 3] and not part.exists()
    assert {d["method"] for d in _records(out)} == {"maxsim"}


def test_a_picture_that_cannot_be_written_leaves_the_old_one(tmp_path, monkeypatch):
    from simattr import outputs
    e = simattr.Explanation.from_dict({"method": "ij", "matrix": [[0.5]], "tokens_a": ["x"], "tokens_b": ["y"],
                                       "score": 0.5})
    path = tmp_path / "e.html"
    path.write_text("old", encoding="utf-8")

    def fails(fh):
        fh.write("<html>half")
        raise OSError(28, "No space left on device")
    with pytest.raises(simattr.SimattrError, match="No space left on device; nothing was changed"):
        outputs.write_atomic(path, fails, "HTML file")
    assert path.read_text(encoding="utf-8") == "old" and os.listdir(tmp_path) == ["e.html"]
    path.chmod(0o644)
    e.to_html(path)
    assert "<html" in path.read_text(encoding="utf-8")
    assert path.stat().st_mode & 0o777 == 0o644  # the replaced file keeps its mode
    fresh = tmp_path / "new.html"
    e.to_html(fresh)
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # a new one gets open()'s, not mkstemp's 0600


def test_ctrl_c_is_a_one_line_message_and_exit_130(monkeypatch, capsys):
    from simattr import cli

    def interrupted(args, argv=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_explain", interrupted)
    assert main(["explain", A, B]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "simattr: interrupted"


def test_ctrl_c_of_a_real_job_exits_130_and_resume_finishes(tmp_path):
    pairs = _pairs_file(tmp_path)
    out, part = tmp_path / "out.jsonl", tmp_path / "out.jsonl.part"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "simattr", "explain-many", str(pairs), "-o", str(out)] + OPTS
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    code, err = proc.wait(timeout=120), proc.stderr.read().decode()
    if code == 0:  # it finished before the signal arrived
        return
    assert code == 130 and "Traceback" not in err and "simattr: interrupted" in err
    assert main(["explain-many", str(pairs), "-o", str(out), "--resume"] + OPTS) == 0
    assert [d["id"] for d in _records(out)] == list(range(len(PAIRS)))
