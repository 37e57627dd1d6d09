"""The C++ ZeroTensor kernels (csrc/cpu/zero_tensor.cpp, `simattr.zero_tensors`): same results as PyTorch's, without
PyTorch's Python meta round trip, registered only inside `fast_kernels()`."""
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp, vmap

from simattr import zero_tensors

pytestmark = pytest.mark.skipif(not zero_tensors.available(), reason="simattr._C is not built")


def _ours_registered() -> bool:
    return "zero_tensor.cpp" in torch._C._dispatch_dump("aten::mul.Tensor")


ZT = torch._efficientzerotensor


def _cases():
    a = torch.randn(3, 4)
    yield "zt*t", torch.mul, ZT((3, 4)), a
    yield "t*zt broadcast", torch.mul, torch.randn(2, 1, 4), ZT((3, 1))
    yield "zt*zt", torch.mul, ZT((4,)), ZT((3, 1))
    yield "zt*int", torch.mul, ZT((3, 4), dtype=torch.float64), torch.arange(4)
    yield "zt+t", torch.add, ZT((3, 1)), a
    yield "t+zt", torch.add, a, ZT((2, 3, 4))
    yield "zt+t alpha", lambda x, y: torch.add(x, y, alpha=2.5), ZT((4,)), a
    yield "t+zt alpha", lambda x, y: torch.add(x, y, alpha=2.5), a, ZT((4,))
    yield "zt+zt", torch.add, ZT((1, 4)), ZT((3, 1))
    yield "zt-t", torch.sub, ZT((3, 4)), a
    yield "t-zt", torch.sub, a, ZT((4,))
    yield "int zt + float t", torch.add, ZT((3, 4), dtype=torch.int64), a.double()
    yield "zt(half)+t(float)", torch.add, ZT((3, 4), dtype=torch.float16), a
    yield "zt+t(bf16)", torch.add, ZT((3, 4)), a.bfloat16()
    yield "0-dim zt * python number", lambda x, y: x * 2.0, ZT(()), None  # meta route: 2.0 promotes like a tensor
    yield "0-dim zt int + python float", lambda x, y: x + 2.5, ZT((), dtype=torch.int64), None
    yield "0-dim zt + 0-dim f64", torch.add, ZT(()), torch.tensor(1.0, dtype=torch.float64)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_kernels_match_pytorch(case):
    _, op, x, y = case
    ref = op(x, y)
    with zero_tensors.fast_kernels(True) as on:
        assert on and _ours_registered()
        got = op(x, y)
    assert not _ours_registered()
    assert got.shape == ref.shape and got.dtype == ref.dtype and got.device == ref.device
    assert got._is_zerotensor() == ref._is_zerotensor()
    assert torch.equal(got, ref)


ERRORS = [
    ("broadcast", lambda: torch.mul(ZT((3, 4)), torch.randn(5))),
    ("int + float alpha", lambda: torch.add(ZT((3,), dtype=torch.int64), torch.arange(3), alpha=2.5)),
    ("float + complex alpha", lambda: torch.add(ZT((3,)), torch.randn(3), alpha=1j)),
    ("int zt + zt, float alpha", lambda: torch.add(ZT((3,), dtype=torch.int64), ZT((3,), dtype=torch.int64), alpha=2.5)),
]


@pytest.mark.parametrize("name,fn", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_pytorchs(name, fn):
    """What PyTorch's route rejects, the kernels reject too (they fall back to that route on anything unusual)."""
    with pytest.raises(Exception) as off:
        fn()
    with zero_tensors.fast_kernels(True):
        with pytest.raises(Exception) as on:
            fn()
    assert type(on.value) is type(off.value)


def test_same_under_a_dispatch_mode():
    """No dispatched helper inside the kernels: they run under a TorchDispatchMode (tracing, fake tensors)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    fn = lambda x: ZT(x.shape) * 2.0 + x
    x = torch.randn(5, 8)
    with Passthrough():
        ref = fn(x)
    with zero_tensors.fast_kernels(True), Passthrough():
        got = fn(x)
    assert got.dtype == ref.dtype and torch.equal(got, ref)


FUNCTIONS = {
    "scalar mul": lambda z, w, b: z * 2.0,
    "bias add": lambda z, w, b: z + b,
    "linear": lambda z, w, b: F.linear(z, w, b),
    "layer_norm": lambda z, w, b: F.layer_norm(z, (8,), b, b),
    "sub": lambda z, w, b: b - z,
    "mixed": lambda z, w, b: torch.softmax((z * 0.5 + b) @ w - 3, -1) * b,
    "bf16 with scalars and fp32": lambda z, w, b: (z.bfloat16() * 3 + 1.5) * b,  # wrapped numbers, promotion
    "int tensor": lambda z, w, b: z * torch.arange(8) + torch.arange(8),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_forward_mode_results_identical_and_no_python_meta(name):
    """vmap(jvp) results bit-identical with the kernels on and off, and with them on no Python meta kernel of
    add/mul runs (the point of the kernels); off, PyTorch's route does run them."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    w, b = torch.randn(8, 8, generator=g), torch.randn(8, generator=g)
    fn = FUNCTIONS[name]
    run = lambda: vmap(lambda tt: jvp(lambda z: fn(z, w, b), (x,), (tt,)))(t)
    calls = []

    def prof(frame, event, arg):
        if event == "call" and "_refs" in frame.f_code.co_filename and frame.f_code.co_name in ("add", "mul", "sub"):
            calls.append(frame.f_code.co_name)

    def counted():
        calls.clear()
        sys.setprofile(prof)
        try:
            return run()
        finally:
            sys.setprofile(None)

    off = counted()
    n_off = len(calls)
    with zero_tensors.fast_kernels(True):
        on = counted()
    assert calls == []
    assert n_off > 0
    assert all(p.dtype == q.dtype and p.shape == q.shape and torch.equal(p, q) for p, q in zip(off, on))


def test_nesting_and_exceptions_restore_pytorch_kernels():
    with zero_tensors.fast_kernels(True):
        with zero_tensors.fast_kernels(True):
            assert _ours_registered()
        assert _ours_registered()  # still inside the outer block
        with pytest.raises(ValueError):
            with zero_tensors.fast_kernels(True):
                raise ValueError("boom")
        assert _ours_registered()
    assert not _ours_registered()
    with zero_tensors.fast_kernels(False) as on:
        assert not on and not _ours_registered()


def test_jobs_run_with_the_kernels_and_results_do_not_change(monkeypatch, family_encoder):
    """IJ and BiLRP: identical matrices with the kernels on and off; on, they are registered during the job."""
    import simattr
    from simattr import engine
    ex = simattr.Explainer(family_encoder("bert"))
    seen = []
    real = engine.jvp

    def spy(*a, **k):
        seen.append(_ours_registered())
        return real(*a, **k)

    monkeypatch.setattr(engine, "jvp", spy)
    a, b = "a cat sat on the mat", "the dog runs home"
    for method, kw in (("ij", dict(steps=3, mode="forward")), ("bilrp", dict(mode="forward"))):
        monkeypatch.setattr(zero_tensors, "ENABLED", False)
        seen.clear()
        off = ex.explain(a, b, method=method, **kw)
        assert seen and not any(seen)
        monkeypatch.setattr(zero_tensors, "ENABLED", True)
        seen.clear()
        on = ex.explain(a, b, method=method, **kw)
        assert seen and all(seen)
        assert (abs(on.matrix - off.matrix)).max() == 0.0
    assert not _ours_registered()


def test_zero_dim_forward_mode_dtypes_unchanged():
    """0-dim operands with Python numbers: the tangent's dtype is PyTorch's (float64 here), not a re-derived one."""
    z, c, d = torch.tensor(1.5), torch.tensor(2.0), torch.tensor(3.0)
    fns = [lambda v: torch.addcmul(v, c, d, value=0.5), lambda v: torch.add(v, c, alpha=2.0), lambda v: (c * 2.0) * v]
    for fn in fns:
        off = jvp(fn, (z,), (torch.tensor(1.0),))
        with zero_tensors.fast_kernels(True):
            on = jvp(fn, (z,), (torch.tensor(1.0),))
        assert [t.dtype for t in on] == [t.dtype for t in off] and all(torch.equal(p, q) for p, q in zip(on, off))


def test_iter_many_pauses_the_kernels_between_pairs(family_encoder):
    """A stream of explanations: the caller's code between two pairs runs with PyTorch's kernels; an abandoned
    stream leaves nothing registered."""
    import simattr
    ex = simattr.Explainer(family_encoder("bert"))
    stream = ex.iter_many(["a cat", "a dog", "a bird"], ["the mat"], method="ij", steps=2)
    next(stream)
    assert not _ours_registered()  # suspended at the yield
    next(stream)
    assert not _ours_registered()
    del stream
    assert not _ours_registered()
