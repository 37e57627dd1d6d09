"""Every supported encoder family: forward and reverse mode agree, and the completeness identity holds."""
import numpy as np
import pytest
import torch

import simattr
from simattr import engine, quadrature
from simattr.methods.ij import prepare_side
from tests.conftest import FAMILIES

A, B = "a small cat sat down", "the big dog ran"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_modes_agree_and_identity_holds(family, family_encoder):
    enc = family_encoder(family, dtype=torch.float64)
    with enc.prepared():
        side = prepare_side(enc, A, 0, None, "token", True, False)
        al, w = quadrature.nodes("riemann_midpoint", 3)
        D = side.fx.shape[-1]
        shape = engine.Shape.of(enc, side.tokens.length, side.x.shape[-1], D, side.x.dtype)
        Gf = engine.path_attribution(side.f, side.r, side.delta, al, w, side.units.matrix, D,
                                     engine.plan(len(side.units), 3, shape, mode="forward"))
        Gr = engine.path_attribution(side.f, side.r, side.delta, al, w, side.units.matrix, D,
                                     engine.plan(len(side.units), 3, shape, mode="reverse"))
    assert float(Gf.abs().max()) > 1e-6
    np.testing.assert_allclose(Gf.numpy(), Gr.numpy(), atol=1e-10, rtol=1e-8)
    e = simattr.explain(A, B, model=enc, steps=64)
    t = e.terms
    target = t["s(a,b)"] - t["s(a,r_b)"] - t["s(r_a,b)"] + t["s(r_a,r_b)"]
    assert abs(target) > 1e-6
    assert e.error < 1e-3 * max(1.0, abs(target)) + 1e-6, (family, e.error, target)
    coarse = simattr.explain(A, B, model=enc, steps=4)
    assert coarse.error >= e.error


@pytest.mark.parametrize("family", ["roberta", "distilbert", "modernbert"])
def test_family_deeper_layer(family, family_encoder):
    enc = family_encoder(family, dtype=torch.float64)
    e = simattr.explain(A, B, model=enc, steps=64, layer=1)
    assert e.settings["layer"] == 1
    t = e.terms
    assert e.error < 1e-3 * max(1.0, abs(t["s(a,b)"] - t["s(a,r_b)"] - t["s(r_a,b)"] + t["s(r_a,r_b)"]))


def test_callable_encoder(tokenizer):
    torch.manual_seed(0)
    table = torch.randn(30522, 16, dtype=torch.float64)
    W = torch.randn(16, 8, dtype=torch.float64)

    def embed(ids, mask):
        return table[ids]

    def encode(x, mask):
        return torch.tanh(x @ W).mean(1)

    enc = simattr.CallableEncoder(tokenizer, embed, encode)
    e = simattr.explain(A, B, model=enc, steps=64, mode="forward")
    e2 = simattr.explain(A, B, model=enc, steps=64, mode="reverse")
    np.testing.assert_allclose(e.matrix, e2.matrix, atol=1e-10)
    assert e.error < 1e-3


def test_bfloat16_accumulates_in_float32(family_encoder):
    """Half-precision models run; G accumulates in float32 and agrees with the float32 model."""
    enc16 = simattr.load_encoder(family_encoder("bert"), dtype=torch.bfloat16)
    e16 = simattr.explain(A, B, model=enc16, steps=16, mode="forward")
    e32 = simattr.explain(A, B, model=family_encoder("bert"), steps=16, mode="forward")
    assert e16.settings["dtype"] == "bfloat16"
    assert np.isfinite(e16.matrix).all()
    scale = np.abs(e32.matrix).max()
    assert np.abs(e16.matrix - e32.matrix).max() < 0.1 * scale
