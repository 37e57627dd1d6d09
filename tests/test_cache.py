"""Explainer(cache_size=N) keeps texts' G across calls (simattr/jobs.py `GCache`): the keys hold values only — a
reference tensor by its contents, unit spans by value, the model by a fingerprint of its weights — and a callable
option bypasses the cache, so a result served from the cache always equals the uncached one (issue 11, item 4)."""
import copy
import gc

import numpy as np
import pytest
import torch

import simattr
from simattr import jobs

# random references and steps=4: completeness is far off, and beside the point here
pytestmark = pytest.mark.filterwarnings("ignore:IJ completeness error")

A, B = "a cat", "the dog"  # 4 tokens each: one reference tensor [1, 4, 384] fits both texts
# mode="forward": A = G_aᵀ G_b whether a G was cached or not (the same arithmetic), so results compare with atol 0;
# steps given explicitly (the default schedule is changing)
IJ = dict(method="ij", steps=4, mode="forward")
BILRP = dict(method="bilrp", mode="forward")


def reference(seed: int) -> torch.Tensor:
    """A reference tensor [1, 4, 384] at layer 0, different for every seed."""
    return 0.5 * torch.randn(1, 4, 384, generator=torch.Generator().manual_seed(seed))


def cached(explainer, size=8):
    return simattr.Explainer(explainer.encoder_a, cache_size=size)


def same(got, want):
    np.testing.assert_array_equal(got.matrix, want.matrix)


@pytest.fixture
def own(explainer):
    """An Explainer of its own MiniLM (a copy of the session's: these tests change its weights), cache 8."""
    return simattr.Explainer(copy.deepcopy(explainer.encoder_a), cache_size=8)


# ------------------------------------------------------------------------------------ the keys themselves
def test_option_keys_are_values():
    r = reference(0)
    assert jobs.option_key(r) == jobs.option_key(r.clone())  # equal contents, another object: one key
    k = jobs.option_key(r)
    r.mul_(2)  # the same object changed in place: another key
    assert jobs.option_key(r) != k
    assert jobs.option_key(r.double()) != jobs.option_key(r)  # dtype is part of it
    assert jobs.option_key(r[0]) != jobs.option_key(r)  # and shape
    assert jobs.option_key([(1, 3)]) == jobs.option_key([(1, 3)])
    assert jobs.option_key([(1, 3)]) != jobs.option_key([[1, 3]])  # a (start, stop) pair vs the indices 1 and 3
    assert jobs.option_key([[1, 2]]) == jobs.option_key([(1, 3)])  # the same tokens in one unit
    assert jobs.option_key(lambda tokens, x: x) is jobs.NO_CACHE  # a callable cannot be keyed by value
    cache = jobs.GCache(4)
    key = (jobs.cache_key("ij", 4, jobs.NO_CACHE), "a")  # as `jobs.run` makes it: (job.cache_key(tower), text)
    assert key == (jobs.NO_CACHE, "a")
    cache.put(key, "G")  # a bypassed key is neither stored nor found
    assert key not in cache and not cache.kept
    assert jobs.cache_key("ij", 4, "pad") == ("ij", 4, "pad")


def test_model_fingerprint(own):
    enc = own.encoder_a
    p = next(enc.model.parameters())
    f0 = jobs.model_fingerprint(enc)
    assert jobs.model_fingerprint(enc) == f0
    with enc.prepared():  # eval mode and frozen parameters (every job runs inside it) change nothing
        assert jobs.model_fingerprint(enc) == f0
    with torch.no_grad():
        p.add_(0.0)  # in place, even to the same values: a new version
    f1 = jobs.model_fingerprint(enc)
    assert f1 != f0
    enc.model.load_state_dict(enc.model.state_dict())
    f2 = jobs.model_fingerprint(enc)
    assert f2 != f1
    p.data = p.data.clone()  # new storage
    assert jobs.model_fingerprint(enc) != f2
    assert jobs.model_fingerprint(copy.deepcopy(enc)) != jobs.model_fingerprint(enc)  # another model


# ------------------------------------------------------------------------------------ reference tensors
def test_new_reference_tensor_each_call_freed(explainer):
    """A new reference with other values on each call, the previous one freed (its id() free to be reused)."""
    ex = cached(explainer)
    for k in range(8):
        r = reference(k)
        same(ex.explain(A, B, reference=r, **IJ), explainer.explain(A, B, reference=r, **IJ))
        del r
        gc.collect()


def test_new_reference_tensor_each_call_kept(explainer):
    """The same with every tensor kept alive; a second round over equal-valued new tensors is served from the
    cache (keys by contents, not by object)."""
    ex = cached(explainer)
    refs = [reference(k) for k in range(4)]  # 2 texts x 4 references: 8 G's, the cache's size
    want = [explainer.explain(A, B, reference=r, **IJ) for r in refs]
    for r, w in zip(refs, want):
        same(ex.explain(A, B, reference=r, **IJ), w)
    hits = ex.cache.hits
    for r, w in zip(refs, want):
        e = ex.explain(A, B, reference=r.clone(), **IJ)
        assert all(p.get("cached") for p in e.extras["plans"])
        same(e, w)
    assert ex.cache.hits == hits + 8


def test_reference_tensor_changed_in_place(explainer):
    ex = cached(explainer)
    r = reference(0)
    same(ex.explain(A, B, reference=r, **IJ), explainer.explain(A, B, reference=r, **IJ))
    with torch.no_grad():
        r.copy_(reference(1))
    e = ex.explain(A, B, reference=r, **IJ)
    assert not any(p.get("cached") for p in e.extras["plans"])
    same(e, explainer.explain(A, B, reference=r, **IJ))


def test_callable_reference_bypasses_the_cache(explainer):
    """A reference given as a function cannot be keyed by value: its tower is computed on every call, never
    stored or read — here the function returns other values on the second call."""
    ex = cached(explainer)
    state = {"r": reference(0)}

    def ref(tokens, x):
        return state["r"]
    for k in range(2):
        state["r"] = reference(k)
        e = ex.explain(A, B, reference=ref, **IJ)
        assert not any(p.get("cached") for p in e.extras["plans"])
        same(e, explainer.explain(A, B, reference=ref, **IJ))
    assert ex.cache.hits == 0 and not ex.cache.kept
    # one tower's reference a callable, the other's a string: the string tower is still cached
    e = ex.explain(A, B, reference=simattr.PerSide(ref, "pad"), **IJ)
    assert len(ex.cache.kept) == 1
    same(e, explainer.explain(A, B, reference=simattr.PerSide(ref, "pad"), **IJ))


# ------------------------------------------------------------------------------------ units
def test_units_spans_by_value(explainer):
    ex = cached(explainer)
    spans = [(1, 3)]
    first = ex.explain(A, B, units=spans, **IJ)
    e = ex.explain(A, B, units=[(1, 3)], **IJ)  # another list, equal: served from the cache
    assert all(p.get("cached") for p in e.extras["plans"])
    same(e, first)
    spans[0] = (0, 2)  # the same list changed in place: not served
    e = ex.explain(A, B, units=spans, **IJ)
    assert not any(p.get("cached") for p in e.extras["plans"])
    same(e, explainer.explain(A, B, units=[(0, 2)], **IJ))


# ------------------------------------------------------------------------------------ changed weights
def _noise(p, seed):
    return 0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed), dtype=p.dtype)


@pytest.mark.parametrize("opts", [IJ, BILRP], ids=["ij", "bilrp"])
def test_weights_changed_in_place(own, opts):
    fresh = simattr.Explainer(own.encoder_a)  # the same model, no cache
    before = own.explain(A, B, **opts)
    same(before, fresh.explain(A, B, **opts))
    with torch.no_grad():
        for k, p in enumerate(own.encoder_a.model.parameters()):
            p.add_(_noise(p, k))
    e = own.explain(A, B, **opts)
    assert not np.array_equal(e.matrix, before.matrix)
    same(e, fresh.explain(A, B, **opts))


@pytest.mark.parametrize("opts", [IJ, BILRP], ids=["ij", "bilrp"])
def test_weights_changed_by_load_state_dict_and_new_data(own, opts):
    fresh = simattr.Explainer(own.encoder_a)
    model = own.encoder_a.model
    original = {k: v.clone() for k, v in model.state_dict().items()}
    own.explain(A, B, **opts)
    model.load_state_dict({k: v + _noise(v, i) if v.is_floating_point() else v
                           for i, (k, v) in enumerate(original.items())})
    same(own.explain(A, B, **opts), fresh.explain(A, B, **opts))
    model.load_state_dict(original)  # back to the first weights: computed again, equal to the first result
    same(own.explain(A, B, **opts), fresh.explain(A, B, **opts))
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data * 1.01  # parameters given new storage
    same(own.explain(A, B, **opts), fresh.explain(A, B, **opts))


# ------------------------------------------------------------------------------------ hits
@pytest.mark.parametrize("opts", [IJ, BILRP], ids=["ij", "bilrp"])
def test_unchanged_repeat_is_served_from_the_cache(explainer, opts):
    ex = cached(explainer)
    first = ex.explain(A, B, **opts)
    assert ex.cache.hits == 0 and len(ex.cache.kept) == 2
    second = ex.explain(A, B, **opts)
    assert ex.cache.hits == 2  # both texts' G from the cache
    assert all(p.get("cached") for p in second.extras["plans"])
    same(second, first)
    same(second, explainer.explain(A, B, **opts))


def test_adaptive_nodes_chosen_per_job_are_part_of_the_key(explainer):
    """Under sim="dot" a text's node target depends on its partners' ‖Δf‖ (methods/ij.py `text_tolerance`), so one
    text can get other nodes in another job: its cached G must not be served for other nodes. tol is set between
    the two targets so that "a cat" stops one refinement earlier with one partner than with the other."""
    from simattr import engine, quadrature
    from simattr.methods.ij import prepare_side, text_tolerance
    enc = explainer.encoder_a
    partners = ("the dog", "Stocks fell sharply on Monday.")
    with enc.prepared():
        sides = {t: prepare_side(enc, t, 2, None, "token", False, False) for t in (A,) + partners}
        norms = [float((sides[t].fx - sides[t].fr).double().norm()) for t in partners]
        s = sides[A]
        s.shape = engine.Shape.of(enc, s.tokens.length, s.x.shape[-1], 384, s.x.dtype)
        rule = quadrature.AdaptiveRule(lambda al: engine.full_tangent_values(s.f, s.r, s.delta, al, s.shape, 2 ** 30),
                                  exact=(s.fx - s.fr).double().numpy())
        errors = [float(np.linalg.norm(rule.error()))]
        while rule.refine():
            errors.append(float(np.linalg.norm(rule.error())))
            if errors[-1] < 1e-6:
                break
    # a tol whose per-text targets for the two partners sit on either side of one of the errors
    lo, hi = sorted(norms)
    per_unit = text_tolerance(1.0, "dot", [1.0])  # target = tol · per_unit / B
    k = next(k for k, e in enumerate(errors) if e < errors[0] / 4 and hi / lo > 1.0001)
    tol = errors[k] / per_unit * (lo * hi) ** 0.5  # target(hi partner) < errors[k] < target(lo partner)
    opts = dict(method="ij", sim="dot", layer=2, tol=tol, mode="forward")
    ex = cached(explainer)
    order = partners if norms[0] < norms[1] else partners[::-1]  # the loose target first, then the tight one
    first = ex.explain(A, order[0], **opts)
    second = ex.explain(A, order[1], **opts)
    fresh = explainer.explain(A, order[1], **opts)
    assert first.extras["steps_used"][0] != fresh.extras["steps_used"][0]  # the two jobs chose other nodes for A
    assert second.extras["steps_used"] == fresh.extras["steps_used"]
    same(second, fresh)
