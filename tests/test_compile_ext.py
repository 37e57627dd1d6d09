"""The compiled extension on first use (simattr/compile_ext.py): a process that finds no installed simattr._C
compiles the kernels into the per-user cache once — two processes started together build it once — and later
processes load it; the kernels it gives equal the PyTorch references."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simattr import compile_ext

PROBE = """
import torch
from simattr import compile_ext
mod, state, why = compile_ext.load()
assert mod is not None, why
from simattr.ops import maxsim_torch
torch.manual_seed(0)
q, d = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
qm, dm = torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 7, dtype=torch.bool)
dm[1, 4:] = False
got = torch.ops.simattr.maxsim(q, d, qm, dm)
ref = maxsim_torch(q, d, qm, dm)
for g, r in zip(got if isinstance(got, (tuple, list)) else [got], ref if isinstance(ref, (tuple, list)) else [ref]):
    assert torch.allclose(g.to(r.dtype), r, atol=1e-5), (g, r)
print(state)
"""


@pytest.mark.skipif(compile_ext.sources_dir() is None, reason="no C++ sources in this install")
def test_first_use_compiles_once_into_the_cache_and_later_processes_load_it(tmp_path):
    env = dict(os.environ, SIMATTR_EXT_CACHE=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("SIMATTR_NO_JIT", None)
    procs = [subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    states = sorted(out.strip() for out, _ in outs)
    assert states == ["cached", "compiled now"]  # one built it, the other waited for the lock and loaded it
    assert sum("compiling the C++ kernels once" in err for _, err in outs) == 1
    again = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.strip() == "cached" and "compiling" not in again.stderr
    assert len([p for p in os.listdir(tmp_path) if not p.startswith(".")]) == 1  # one key for this torch and sources


def test_no_jit_and_no_sources_say_why(monkeypatch):
    monkeypatch.setenv("SIMATTR_NO_JIT", "1")
    mod, state, why = compile_ext.load()
    assert mod is None and state == "not built" and "SIMATTR_NO_JIT=1" in why
    monkeypatch.delenv("SIMATTR_NO_JIT")
    monkeypatch.setattr(compile_ext, "sources_dir", lambda: None)
    mod, state, why = compile_ext.load()
    assert mod is None and state == "not built" and "no C++ sources" in why
