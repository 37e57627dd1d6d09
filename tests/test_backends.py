"""The backend registry (simattr/backends.py): one loader for the extension, one table for dispatch and `info`."""
import importlib
import os

import pytest
import torch

import simattr
from simattr import backends, report


@pytest.fixture
def fresh_loader(monkeypatch):
    backends._load_extension.cache_clear()
    yield
    backends._load_extension.cache_clear()


def _failing_import(exc):
    real = importlib.import_module

    def fake(name, *args):
        if name == "simattr._C":
            raise exc
        return real(name, *args)
    return fake


def test_extension_not_built_and_built_for_another_torch_are_told_apart(monkeypatch, fresh_loader):
    monkeypatch.setenv("SIMATTR_NO_JIT", "1")  # not built, and not compiled on first use either
    monkeypatch.setattr(importlib, "import_module", _failing_import(ModuleNotFoundError("No module named 'simattr._C'")))
    status = backends.extension()
    assert (status.available, status.state) == (False, "not built") and "pip install" in status.reason
    backends._load_extension.cache_clear()
    monkeypatch.setattr(importlib, "import_module", _failing_import(ImportError("undefined symbol: _ZN3c10...")))
    status = backends.extension()
    assert (status.available, status.state) == (False, "built for another torch")
    assert torch.__version__ in status.reason and "undefined symbol" in status.reason
    assert not backends.has_operator("maxsim")
    assert backends.choose("maxsim", "cpu", density=0.1) == "torch"  # auto falls back to the reference
    with pytest.raises(simattr.SimattrError, match="built for another torch"):
        backends.choose("contraction", "cpu", "cpp")  # a named one says why it cannot run


@pytest.mark.skipif(os.environ.get("SIMATTR_REQUIRE_EXT") != "1", reason="CI sets SIMATTR_REQUIRE_EXT=1")
def test_the_extension_is_active_where_required():
    """CI installs the project as the README says and requires the compiled kernels to be in use."""
    status = backends.extension()
    assert status.available, status.reason
    assert backends.has_operator("maxsim") and backends.has_operator("contract_tangent")
    assert backends.choose("contraction", "cpu") == "cpp"


def test_disabled_extension(monkeypatch):
    monkeypatch.setenv("SIMATTR_NO_EXT", "1")
    assert backends.extension().state == "disabled"
    assert backends.choose("contraction", "cpu") == "torch"


@pytest.mark.parametrize("operator", sorted(backends.REGISTRY))
def test_registry_drives_choices_dispatch_and_info(operator):
    table = backends.REGISTRY[operator]
    assert backends.names(operator) == ("auto",) + tuple(table)
    assert "torch" in table and table["torch"].needs("cpu")[0]  # the reference runs everywhere
    for device, pick in backends.AUTO[operator].items():
        assert callable(pick) or pick in table, (device, pick)
    shown = report.info()[operator]
    assert set(table) <= set(shown) and shown["torch"]["available"]
    with pytest.raises(simattr.SimattrError, match=f"unknown {operator} backend 'fast'"):
        backends.choose(operator, "cpu", "fast")
    for name, b in table.items():
        if not b.accepts("cpu"):
            with pytest.raises(simattr.SimattrError, match="tensors only"):
                backends.choose(operator, "cpu", name)


def test_option_choices_come_from_the_registry():
    from simattr import contraction
    from simattr.methods import OPTIONS
    assert contraction.BACKENDS == backends.names("contraction")
    backend_option = OPTIONS["maxsim"].by_name["backend"]
    assert backend_option.check.choices == backends.names("maxsim")


def test_fused_attention_runs_the_registry_choice(family_encoder, monkeypatch):
    """The fused attention asks the registry which kernel to run, per call, with the backend in effect; an unknown
    backend is a SimattrError naming the registry's choices."""
    from simattr import attention
    asked, choose = [], backends.choose

    def spy(operator, device_type, backend="auto", **context):
        picked = choose(operator, device_type, backend, **context)
        if operator == "attention":
            asked.append((device_type, backend, picked))
        return picked
    monkeypatch.setattr(backends, "choose", spy)
    ex = simattr.Explainer(family_encoder("bert"))
    ref = ex.explain("the cat sat", "a dog ran", steps=3, attention="eager")
    assert not asked
    with attention.kernel_backend("torch"):
        got = ex.explain("the cat sat", "a dog ran", steps=3, attention="fused")
    assert asked and all(a == ("cpu", "torch", "torch") for a in asked)
    assert abs(got.matrix - ref.matrix).max() <= 1e-5 * max(1.0, abs(ref.matrix).max())
    with pytest.raises(simattr.SimattrError, match="unknown attention backend 'fast'; choose one of auto, torch"):
        with attention.kernel_backend("fast"):
            pass
