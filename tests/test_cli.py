import json
import subprocess
import sys

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
