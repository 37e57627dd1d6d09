"""Batched masked MaxSim kernels (Triton, C++) against a PyTorch reference that lives here.

Contract: values[b, i] = max over unmasked j of <Q[b, i], C[b, j]>, index[b, i] = the LOWEST such j;
masked query tokens and query tokens of a document without unmasked tokens get 0 and -1.
Triton runs on CUDA when there is one, else under the interpreter (TRITON_INTERPRET=1, set here only while this
module's tests run, before triton is imported). C++ tests are skipped when simattr._C is not built.
"""
import importlib
import os
import sys

import pytest
import torch

from simattr import backends, ops, report

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def reference(Q, C, Qmask=None, Cmask=None):
    """float64 masked MaxSim with the lowest-index tie rule, written independently of simattr.ops."""
    Q, C = Q.double(), C.double()
    B = max(Q.shape[0], C.shape[0])
    Q, C = Q.expand(B, -1, -1), C.expand(B, -1, -1)
    Sq, Sd = Q.shape[1], C.shape[1]
    qm = torch.ones(B, Sq, dtype=torch.bool) if Qmask is None else Qmask.cpu().bool().expand(B, -1)
    cm = torch.ones(B, Sd, dtype=torch.bool) if Cmask is None else Cmask.cpu().bool().expand(B, -1)
    values = torch.zeros(B, Sq, dtype=torch.float64)
    index = torch.full((B, Sq), -1, dtype=torch.long)
    S = torch.einsum("bik,bjk->bij", Q.cpu(), C.cpu())
    for b in range(B):
        cols = torch.nonzero(cm[b]).flatten()
        if len(cols) == 0:
            continue
        for i in range(Sq):
            if not qm[b, i]:
                continue
            row = S[b, i, cols]
            best = row.max()
            first = int(torch.nonzero(row == best).flatten()[0])
            values[b, i] = best
            index[b, i] = int(cols[first])
    return values, index


# ---------------------------------------------------------------------- backends under test
@pytest.fixture(scope="module")
def triton_maxsim():
    with pytest.MonkeyPatch.context() as mp:
        if not CUDA:
            mp.setenv("TRITON_INTERPRET", "1")
        try:
            import triton  # noqa: F401
        except ImportError:
            pytest.skip("triton is not installed")
        mod = sys.modules.get("simattr.kernels.maxsim")
        mod = importlib.reload(mod) if mod is not None else importlib.import_module("simattr.kernels.maxsim")
        yield mod.maxsim_triton


def _cpp_available():
    if os.environ.get("SIMATTR_NO_EXT") == "1":
        return False
    try:
        importlib.import_module("simattr._C")
    except ImportError:
        return False
    return hasattr(torch.ops.simattr, "maxsim")


def _run(backend, triton_fn, Q, C, qm=None, cm=None):
    if backend == "triton":
        return triton_fn(Q.to(DEV), C.to(DEV), None if qm is None else qm.to(DEV), None if cm is None else cm.to(DEV))
    if backend == "cpp":
        if not _cpp_available():
            pytest.skip("the C++ extension simattr._C is not built")
        qm = torch.ones(Q.shape[:2], dtype=torch.bool) if qm is None else qm
        cm = torch.ones(C.shape[:2], dtype=torch.bool) if cm is None else cm
        return torch.ops.simattr.maxsim(Q.float(), C.float(), qm, cm)
    return ops.maxsim_torch(Q, C, qm, cm)


BACKENDS = ["torch", "cpp", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "triton":
        return "triton", request.getfixturevalue("triton_maxsim")
    return request.param, None


def _check(out, ref, atol=1e-4, exact_index=False, Q=None, C=None):
    v, i = (t.cpu() for t in out)
    rv, ri = ref
    assert v.dtype == torch.float32 and i.dtype == torch.int64
    assert v.shape == rv.shape and i.shape == ri.shape
    assert torch.allclose(v.double(), rv, atol=atol, rtol=0), (v - rv).abs().max()
    assert ((i == -1) == (ri == -1)).all()
    if exact_index:
        assert torch.equal(i, ri)
    else:  # float rounding may reorder near-ties: the chosen index must attain the maximum
        S = torch.einsum("bik,bjk->bij", Q.double().expand(i.shape[0], -1, -1), C.double().expand(i.shape[0], -1, -1))
        got = S.gather(2, i.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch.where(i >= 0, got, torch.zeros_like(got)), rv, atol=atol)


# ---------------------------------------------------------------------- tests
def test_random_ragged(backend):
    name, fn = backend
    g = torch.Generator().manual_seed(0)
    B, Sq, Sd, D = 5, 19, 83, 40  # Sd spans two Triton tiles; D not a multiple of the K block
    Q, C = torch.randn(B, Sq, D, generator=g), torch.randn(B, Sd, D, generator=g)
    lq, ld = torch.tensor([19, 1, 7, 16, 3]), torch.tensor([83, 1, 64, 65, 20])
    qm = torch.arange(Sq)[None] < lq[:, None]
    cm = torch.arange(Sd)[None] < ld[:, None]
    _check(_run(name, fn, Q, C, qm, cm), reference(Q, C, qm, cm), Q=Q, C=C)


def test_ties_lowest_index(backend):
    """Integer entries make every product exact, so ties are real: the lowest document index must win."""
    name, fn = backend
    g = torch.Generator().manual_seed(1)
    B, Sq, Sd, D = 4, 9, 150, 5
    Q = torch.randint(-1, 2, (B, Sq, D), generator=g).float()
    C = torch.randint(-1, 2, (B, Sd, D), generator=g).float()
    C[:, 100] = C[:, 3]  # a tie across tiles
    ref = reference(Q, C)
    assert (ref[1] < 64).float().mean() > 0.5  # ties are common in this data
    _check(_run(name, fn, Q, C), ref, exact_index=True)


def test_one_token_and_masks(backend):
    name, fn = backend
    g = torch.Generator().manual_seed(2)
    Q, C = torch.randn(3, 1, 16, generator=g), torch.randn(3, 1, 16, generator=g)
    _check(_run(name, fn, Q, C), reference(Q, C), exact_index=True)
    # arbitrary masks: holes in the document, masked query tokens, a document with no token left
    Q, C = torch.randn(3, 6, 16, generator=g), torch.randn(3, 10, 16, generator=g)
    qm = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    cm = torch.ones(3, 10, dtype=torch.bool)
    cm[0, ::2] = False
    cm[1] = False
    v, i = _run(name, fn, Q, C, qm, cm)
    _check((v, i), reference(Q, C, qm, cm), Q=Q, C=C)
    assert (i.cpu()[0] % 2 == 1)[qm[0]].all() and (i.cpu()[0][~qm[0]] == -1).all()
    assert (v.cpu()[1] == 0).all() and (i.cpu()[1] == -1).all()


def test_broadcast_one_query_many_documents(backend):
    name, fn = backend
    g = torch.Generator().manual_seed(3)
    Q, C = torch.randn(1, 7, 24, generator=g), torch.randn(6, 30, 24, generator=g)
    cm = torch.arange(30)[None] < torch.tensor([30, 2, 17, 29, 1, 8])[:, None]
    _check(_run(name, fn, Q, C, None, cm), reference(Q, C, None, cm), Q=Q, C=C)
    # and one document against many queries
    Qs, Cd = torch.randn(4, 5, 24, generator=g), torch.randn(1, 12, 24, generator=g)
    _check(_run(name, fn, Qs, Cd), reference(Qs, Cd), Q=Qs, C=Cd)


def test_triton_half_precision(triton_maxsim):
    g = torch.Generator().manual_seed(4)
    Q, C = torch.randn(2, 8, 32, generator=g), torch.randn(2, 20, 32, generator=g)
    v, i = triton_maxsim(Q.half().to(DEV), C.half().to(DEV))
    rv, _ = reference(Q.half().float(), C.half().float())
    assert torch.allclose(v.cpu().double(), rv, atol=2e-2)


def test_dispatch_and_errors():
    Q, C = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
    v, i = ops.maxsim(Q, C, backend="torch")
    _check((v, i), reference(Q, C), Q=Q, C=C)
    assert ops.choose_maxsim_backend("cpu", torch.float64) == "torch"
    with pytest.raises(ValueError):
        ops.maxsim(Q, torch.randn(3, 4, 8))
    with pytest.raises(ValueError):
        ops.maxsim(Q, torch.randn(2, 4, 9))
    with pytest.raises(ValueError):
        ops.maxsim(Q, C, backend="nope")
    if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError):
            ops.maxsim(Q, C, backend="triton")
    info = report.info()["maxsim"]
    assert info["torch"]["available"]
    assert info["cpp"]["available"] == _cpp_available()
    if _cpp_available():
        assert ops.choose_maxsim_backend("cpu", torch.float32, density=1.0) == "torch"
        assert ops.choose_maxsim_backend("cpu", torch.float32, density=0.3) == "cpp"
    qm = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert abs(ops.mask_density(Q, C, qm, None) - (2 * 4 + 1 * 4) / (2 * 3 * 4)) < 1e-12


def test_torch_path_chunks_agree():
    g = torch.Generator().manual_seed(5)
    Q, C = torch.randn(9, 4, 8, generator=g), torch.randn(9, 6, 8, generator=g)
    a = ops.maxsim_torch(Q, C)
    b = ops.maxsim_torch(Q, C, chunk=30)  # one pair per chunk
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
