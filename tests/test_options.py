"""The option tables (simattr/options.py, one per method in its module): validation, aliases, PerSide, the command
line, the cache key and docs/options.md all come from them."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import simattr
from simattr import jobs, options
from simattr.methods import BATCH_METHODS, OPTIONS, PAIR_JOBS

ROOT = Path(__file__).resolve().parents[1]
A, B = "a cat sat", "the dog ran"


def test_docs_options_page_is_generated_from_the_tables():
    page = (ROOT / "docs" / "options.md").read_text()
    assert page == options.markdown(OPTIONS), "regenerate: simattr options > docs/options.md"


@pytest.mark.parametrize("method", sorted(BATCH_METHODS))
def test_set_based_tables_are_their_functions_signatures(method):
    params = list(inspect.signature(BATCH_METHODS[method]).parameters.values())[4:]
    assert {p.name: p.default for p in params} == {o.name: o.default for o in OPTIONS[method]}


def test_every_method_has_a_table_and_every_option_is_documented():
    from simattr.methods import METHODS
    assert set(OPTIONS) == set(METHODS)
    for table in OPTIONS.values():
        for o in table:
            assert o.help and o.name.isidentifier()


def test_every_option_with_a_flag_is_on_the_command_line():
    from simattr.cli import _parser
    help_text = _parser()._subparsers._group_actions[0].choices["explain"].format_help()
    for table in OPTIONS.values():
        for o in table:
            if o.cli is not None:
                assert options._flag(o) in help_text, o.name


@pytest.mark.parametrize("given,match", [
    ({"stepz": 8}, r"does not take option 'stepz' \(did you mean 'steps'\?\)"),
    ({"steps": 0}, r"option steps=0 of method 'ij': must be at least 1"),
    ({"steps": 2.5}, r"option steps=2.5 of method 'ij'"),
    ({"tol": -1}, r"option tol=-1 of method 'ij': must be a positive number"),
    ({"sim": "l2"}, r"option sim='l2' of method 'ij': choose one of 'auto', 'cosine', 'dot'"),
    ({"retry_float64": "yes"}, r"option retry_float64='yes' of method 'ij': must be True or False"),
    ({"reference": ("zero", "pad")}, r"PerSide\(ref_a, ref_b\)"),
    ({"sim": simattr.PerSide("cosine", "dot")}, r"option 'sim' of method 'ij' is shared by both texts"),
    ({"n_steps": 8, "steps": 8}, r"give either '(n_)?steps' or '(n_)?steps'"),
])
def test_bad_options_are_errors_naming_the_option(given, match):
    with pytest.raises(simattr.SimattrError, match=match):
        OPTIONS["ij"].resolve(given)


def test_captum_names_mean_the_same(explainer):
    ours = explainer.explain(A, B, steps=8, quadrature="riemann_midpoint", reference="zero")
    captum = explainer.explain(A, B, n_steps=8, method_quadrature="riemann_middle", baselines="zero",
                               return_convergence_delta=True)
    assert (ours.matrix == captum.matrix).all()


def test_per_side_values(explainer):
    both = explainer.explain(A, B, steps=4, reference=simattr.PerSide("zero", "pad"))
    zero = explainer.explain(A, B, steps=4, reference="zero")
    pad = explainer.explain(A, B, steps=4)
    assert both.settings["reference"] == ["zero", "pad"]
    assert both.terms["s(r_a,b)"] == pytest.approx(zero.terms["s(r_a,b)"])
    assert both.terms["s(a,r_b)"] == pytest.approx(pad.terms["s(a,r_b)"])


def test_explainer_defaults_are_checked_and_soft(explainer):
    with pytest.raises(simattr.SimattrError, match="option of no method"):
        simattr.Explainer(explainer.encoder_a, stepz=8)
    ex = simattr.Explainer(explainer.encoder_a, steps=4, units="word")
    e = ex.explain(A, B, method="maxsim")  # maxsim has units but no steps: the default applies where it can
    assert e.method == "maxsim"


# values other than the default for every option that changes G (in_key) — and for some that do not
OTHER = {"steps": 6, "tol": 1e-2, "max_steps": 64, "retry_float64": False, "quadrature": "gauss_legendre",
         "reference": "zero", "layer": 2, "units": "word", "sim": "dot", "truncate": True, "rule": "attnlrp",
         "bias": "absorb", "mode": "reverse", "max_memory": "1GB", "internal_batch_size": 7, "attention": "eager",
         "contraction": "torch", "exact": True, "dims": [0, 1, 2], "return_factors": True, "pack": False}


@pytest.mark.parametrize("method", sorted(PAIR_JOBS))
def test_cache_key_changes_with_exactly_the_in_key_options(explainer, method):
    """The cache key is made from the table: an option marked in_key gives another key, any other the same; a new
    option without a value in OTHER fails here, so its in_key marking is looked at."""
    enc = explainer.encoder_a
    base = {"steps": 8} if method == "ij" else {}

    def key(**opts):
        job = PAIR_JOBS[method](enc, enc, **{**base, **opts})
        job.n_steps = getattr(job, "n_steps", None) or (opts.get("steps") or 8)
        return job.cache_key(0)

    ref = key()
    for o in OPTIONS[method]:
        assert o.name in OTHER, f"give {o.name!r} a value in OTHER"
        value = OTHER[o.name]
        if method == "ij" and o.name == "quadrature":
            changed = key(quadrature=value)
        elif method == "ij" and o.name in ("tol", "max_steps", "retry_float64"):
            changed, ref_auto = key(steps="auto", **{o.name: value}), key(steps="auto")
            assert (changed != ref_auto) == o.in_key, o.name
            continue
        else:
            changed = key(**{o.name: value})
        assert (changed != ref) == o.in_key, o.name

