"""Bad input gives a clear SimattrError naming the problem, never a deep torch traceback."""
import math

import pytest
import torch

import simattr
from simattr import SimattrError
from simattr.cli import main


def test_empty_and_non_string(explainer):
    with pytest.raises(SimattrError, match="empty"):
        explainer.explain("", "x")
    with pytest.raises(SimattrError, match="empty"):
        explainer.explain("a", "   ")
    with pytest.raises(SimattrError, match="string"):
        explainer.explain(3, "x")
    with pytest.raises(SimattrError, match="string"):
        explainer.explain("a", None)


def test_too_long_text(explainer):
    long = "word " * 400
    with pytest.raises(SimattrError, match="maximum of 256"):
        explainer.explain(long, "x", steps=1)
    with pytest.warns(UserWarning, match="truncated"):
        tok = explainer.encoder_a.tokenize(long, truncate=True)
    assert tok.length == 256 and tok.truncated


def test_unknown_model():
    with pytest.raises(SimattrError, match="unknown model"):
        simattr.Explainer("/no/such/model/dir")
    with pytest.raises(SimattrError, match="unknown model"):
        simattr.Explainer("no-such-org/no-such-model")


def test_wrong_layer(explainer):
    for layer in (-1, 6, 2.5, "1"):
        with pytest.raises(SimattrError, match="layer"):
            explainer.explain("a", "b", layer=layer, steps=1)


def test_bad_options(explainer):
    with pytest.raises(SimattrError, match="steps"):
        explainer.explain("a", "b", steps=0)
    with pytest.raises(SimattrError, match="quadrature"):
        explainer.explain("a", "b", quadrature="simpson")
    with pytest.raises(SimattrError, match="mode"):
        explainer.explain("a", "b", mode="sideways", steps=1)
    with pytest.raises(SimattrError, match="sim"):
        explainer.explain("a", "b", sim="l2", steps=1)
    with pytest.raises(SimattrError, match="units"):
        explainer.explain("a", "b", units="sentence", steps=1)
    with pytest.raises(SimattrError, match="method"):
        explainer.explain("a", "b", method="magic")
    with pytest.raises(SimattrError, match="max_memory"):
        explainer.explain("a", "b", max_memory="lots", steps=1)
    with pytest.raises(SimattrError, match="reference tensor"):
        explainer.explain("a", "b", reference=torch.zeros(2, 2), steps=1)
    with pytest.raises(SimattrError, match="does not take"):
        explainer.explain("a", "b", colour="red")
    # Captum names are accepted
    e = explainer.explain("a", "b", n_steps=3, internal_batch_size=4)
    assert e.settings["steps"] == 3


def test_nan_is_reported(explainer):
    enc = explainer.encoder_a
    x = enc.hidden(enc.tokenize("a"), 0)
    bad = torch.full_like(x[0], math.nan)
    with pytest.raises(SimattrError, match="NaN"):
        explainer.explain("a", "b", reference=bad, steps=1)
    p = next(enc.model.parameters())
    saved = p.data.clone()
    try:
        p.data[:] = math.inf
        with pytest.raises(simattr.NumericalError, match="NaN or Inf"):
            explainer.explain("a", "b", steps=1)
    finally:
        p.data.copy_(saved)


def test_cli_errors_are_one_line(capsys):
    assert main(["explain", "", "b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("simattr: error:") and "Traceback" not in err
    assert main(["explain", "a", "b", "--model", "/no/such/dir"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["explain", "a", "b", "--steps", "zero"])
