"""Many pairs on one engine (simattr/jobs.py): the planner's choices, and explain_many equal to explain pair by pair
with each text's G computed at most once."""
import contextlib

import numpy as np
import pytest

import simattr
from simattr import jobs
from simattr.errors import SimattrError
from simattr.jobs import Item, plan_pairs

Q = "a cat"
DOCS = ["the small dog ran quickly across the wide green park", "a cat sat on the mat", "cats"]


# ---------------------------------------------------------------------------------------------- the planner
def test_one_pair_is_the_single_pair_rule():
    D = 384
    # different active units: the smaller side is made, the other by cross passes (S of the long side cancels)
    p = plan_pairs([Item(3, 5), Item(12, 14)], [(0, 1)], D)
    assert p.materialise == {0} and p.how == ["cross-a"]
    p = plan_pairs([Item(12, 14), Item(3, 5)], [(0, 1)], D)
    assert p.materialise == {1} and p.how == ["cross-b"]
    # equal units: per-side G (which also gives completeness per side)
    p = plan_pairs([Item(4, 6), Item(4, 6)], [(0, 1)], D)
    assert p.materialise == {0, 1} and p.how == ["both"]
    # both sides over D: reverse mode per side beats cross passes with > D cotangents
    p = plan_pairs([Item(500, 502), Item(600, 602)], [(0, 1)], D)
    assert p.how == ["both"]
    # forced modes
    assert plan_pairs([Item(3, 5), Item(12, 14)], [(0, 1)], D, "forward").how == ["both"]
    assert plan_pairs([Item(4, 6), Item(4, 6)], [(0, 1)], D, "cross").how == ["cross-a"]
    # a text with itself: its G once, A = GᵀG
    p = plan_pairs([Item(4, 6)], [(0, 0)], D)
    assert p.materialise == {0} and p.how == ["both"]
    with pytest.raises(SimattrError, match="mode"):
        plan_pairs([Item(1, 3)], [(0, 0)], D, "sideways")


def test_repeated_pairs_cost_once():
    D = 384
    # the runner makes a repeated pair (or its mirror) once, so the planner must count it once
    p = plan_pairs([Item(3, 5), Item(8, 20)], [(0, 1)] * 3, D)
    assert p.how == ["cross-a"] * 3 and p.cost == 3 * 5 + 3 * 20
    p = plan_pairs([Item(3, 5), Item(8, 20)], [(0, 1), (1, 0)], D)
    assert p.how == ["cross-a", "cross-b"] and p.cost == 3 * 5 + 3 * 20
    assert p.pairwise_cost == 2 * (3 * 5 + 3 * 20)


def test_query_against_documents_makes_the_query_once():
    D = 384
    items = [Item(3, 5)] + [Item(u, u + 2) for u in (40, 2, 3, 60)]
    p = plan_pairs(items, [(0, k) for k in range(1, 5)], D)
    assert 0 in p.materialise
    # long documents by cross passes (3 VJPs each), a 2-unit document by its own G (2 JVPs < 3 VJPs); a tie
    # (3 units) keeps its G
    assert p.how == ["cross-a", "both", "both", "cross-a"]
    assert p.cost == 3 * 5 + 3 * 42 + 2 * 4 + 3 * 5 + 3 * 62
    assert p.cost < p.pairwise_cost  # pair by pair the query's G would be made four times


def test_grid_makes_each_text_once_or_crosses_it():
    D = 384
    qs = [Item(u, u + 2) for u in (3, 5, 4)]
    ds = [Item(u, u + 2) for u in (20, 30, 25, 40)]
    grid = [(i, 3 + j) for i in range(3) for j in range(4)]
    # 3 short queries: a document's cross passes (3 + 5 + 4 = 12 VJPs) are cheaper than its G (>= 20 JVPs)
    p = plan_pairs(qs + ds, grid, D)
    assert p.materialise == {0, 1, 2} and set(p.how) == {"cross-a"}
    assert p.cost == sum(q.units * q.length for q in qs) + sum(12 * d.length for d in ds)
    # 8 queries: 8 x 5 = 40 VJPs per document would exceed its own G: every text once, A = G_aᵀ G_b
    qs = [Item(5, 7) for _ in range(8)]
    grid = [(i, 8 + j) for i in range(8) for j in range(4)]
    p = plan_pairs(qs + ds, grid, D)
    assert p.materialise == set(range(12)) and set(p.how) == {"both"}
    assert p.cost == sum(it.units * it.length for it in qs + ds)
    assert p.cost < p.pairwise_cost


def test_planner_scales_to_large_jobs():
    import random
    rng = random.Random(0)
    items = [Item(rng.randint(2, 60), 0) for _ in range(3000)]
    for it in items:
        it.length = it.units + 2
    pair_ids = [(rng.randrange(100), 100 + rng.randrange(2900)) for _ in range(20000)]
    p = plan_pairs(items, pair_ids, 384)
    assert len(p.how) == 20000 and p.cost <= p.pairwise_cost
    for (i, j), how in zip(pair_ids, p.how):  # every pair is covered by a made G
        assert (i in p.materialise) if how in ("cross-a", "both") else (j in p.materialise)
        if how == "both":
            assert j in p.materialise


# ---------------------------------------------------------------------------------------------- the runner
@contextlib.contextmanager
def counting(monkeypatch, job_cls):
    """Count the G's made and the cross passes of a job class."""
    counts = {"attribution": [], "cross": 0, "cross_runs": 0}
    attribution, cross = job_cls.attribution, job_cls.cross

    def counted_attribution(self, side):
        counts["attribution"].append(side.tokens.length)
        return attribution(self, side)

    def counted_cross(self, Gs, other):
        counts["cross"] += len(Gs)
        counts["cross_runs"] += 1
        return cross(self, Gs, other)
    monkeypatch.setattr(job_cls, "attribution", counted_attribution)
    monkeypatch.setattr(job_cls, "cross", counted_cross)
    yield counts


@pytest.mark.parametrize("method", ["ij", "bilrp"])
def test_query_against_documents_equals_pair_by_pair(explainer, monkeypatch, method):
    from simattr.methods.bilrp import BiLRPJob
    from simattr.methods.ij import IJJob
    opts = dict(steps=3) if method == "ij" else {}
    one = [explainer.explain(Q, d, method=method, **opts) for d in DOCS]
    with counting(monkeypatch, IJJob if method == "ij" else BiLRPJob) as counts:
        many = explainer.explain_many(Q, DOCS, method=method, **opts)
    assert len(many) == len(DOCS)
    for e1, em in zip(one, many):
        assert em.method == method and em.tokens_a == e1.tokens_a and em.tokens_b == e1.tokens_b
        # float32 rounding: the job prepares and packs its texts in padded batches, the single pair alone
        np.testing.assert_allclose(em.matrix, e1.matrix, atol=1e-6)
        assert em.score == pytest.approx(e1.score, abs=1e-6)
        assert em.error == pytest.approx(e1.error, abs=1e-6)
        assert em.terms == pytest.approx(e1.terms, abs=1e-6)
    # the query's G once, not once per pair; the plans say which pairs reused it
    n_query = len(explainer.encoder_a.tokenize(Q).tokens)
    assert counts["attribution"].count(n_query) == 1
    assert len(counts["attribution"]) + counts["cross"] < 2 * len(DOCS)
    reused = [p.get("reused", False) for e in many for p in e.extras["plans"]]
    assert sum(reused) >= len(DOCS) - 1


@pytest.mark.parametrize("method", ["ij", "bilrp"])
def test_all_pairs_grid(explainer, monkeypatch, method):
    from simattr.methods.bilrp import BiLRPJob
    from simattr.methods.ij import IJJob
    qs, ds = ["a cat sat", "dogs run", "a cat sat"], DOCS[1:]  # a repeated text: its G once as well
    opts = dict(steps=2) if method == "ij" else {}
    with counting(monkeypatch, IJJob if method == "ij" else BiLRPJob) as counts:
        grid = explainer.explain_many(qs, ds, method=method, all_pairs=True, **opts)
    assert len(grid) == 3 and all(len(row) == 2 for row in grid)
    # 4 distinct texts (2 queries, 2 documents): each either made once or crossed in one run
    assert len(counts["attribution"]) + counts["cross_runs"] <= 4
    for i, q in enumerate(qs):
        for j, d in enumerate(ds):
            e1 = explainer.explain(q, d, method=method, **opts)
            np.testing.assert_allclose(grid[i][j].matrix, e1.matrix, atol=1e-6)
            assert grid[i][j].tokens_a == e1.tokens_a and grid[i][j].tokens_b == e1.tokens_b


def test_aligned_lists_and_both_towers(explainer, tokenizer):
    from tests.conftest import tiny_model
    enc_a, enc_b = (simattr.Encoder(tiny_model("bert", seed=s), tokenizer, pooling="mean", name=f"t{s}")
                    for s in (0, 1))
    ex = simattr.Explainer(enc_a, enc_b)
    a, b = ["a cat sat", "the dog", "a cat sat"], ["the dog", "a cat sat", "a cat sat"]
    many = ex.explain_many(a, b, method="ij", steps=4)
    for k in range(3):  # two towers: the same text on both sides is two different G's
        np.testing.assert_allclose(many[k].matrix, ex.explain(a[k], b[k], method="ij", steps=4).matrix, atol=1e-6)
    assert many[2].extras["plans"][0].get("reused") and many[2].extras["plans"][1].get("reused")


def test_steps_auto_holds_every_pair(explainer):
    many = explainer.explain_many(Q, DOCS[:2], method="ij", tol=1e-3)
    for e in many:
        assert e.error <= 1e-3 and e.extras["converged"]
    # cosine: a text's nodes depend on the text alone, so a job gives what single explanations give
    for e, d in zip(many, DOCS[:2]):
        single = explainer.explain(Q, d, tol=1e-3)
        assert single.extras["steps_used"] == e.extras["steps_used"]
        np.testing.assert_allclose(e.matrix, single.matrix, atol=1e-6)
    assert many[0].extras["steps_used"][0] == many[1].extras["steps_used"][0]  # the query's nodes, once


def test_steps_auto_over_a_uniform_rule_holds_every_pair(explainer):
    many = explainer.explain_many(Q, DOCS[:2], method="ij", steps="auto", quadrature="riemann_midpoint", tol=1e-3)
    steps = {e.settings["steps"] for e in many}
    assert len(steps) == 1  # one step count for the job, so the G's can be shared
    history = many[0].extras["steps_history"]
    assert history[-1]["steps"] == steps.pop()
    for e in many:
        assert e.error <= 1e-3 or history[-1]["steps"] == 256
    # the job's count is the largest any single pair needs
    single = max(explainer.explain(Q, d, steps="auto", quadrature="riemann_midpoint", tol=1e-3).settings["steps"]
                 for d in DOCS[:2])
    assert many[0].settings["steps"] == single


def test_set_based_methods_all_pairs(explainer):
    grid = explainer.explain_many(["a cat", "dogs"], DOCS, method="maxsim", all_pairs=True)
    assert len(grid) == 2 and all(len(row) == 3 for row in grid)
    np.testing.assert_allclose(grid[1][2].matrix, explainer.explain("dogs", DOCS[2], method="maxsim").matrix,
                               atol=1e-6)


def test_errors_and_the_model_restored(explainer):
    with pytest.raises(SimattrError, match="equal numbers"):
        explainer.explain_many(["a", "b"], ["c", "d", "e"], method="ij", steps=1)
    with pytest.raises(SimattrError, match="empty"):
        explainer.explain_many(["a", " "], ["c", "d"], method="ij", steps=1)
    with pytest.raises(SimattrError, match="does not take"):
        explainer.explain_many(["a"], ["c"], method="bilrp", steps=1)
    # an iterator left half way closes its job: the model is back in the user's state
    model = explainer.encoder_a.model
    model.train()
    try:
        from simattr.methods.ij import IJJob
        it = jobs.run(IJJob(explainer.encoder_a, explainer.encoder_a, steps=1), [Q], DOCS)
        next(it)
        assert not model.training
        it.close()
        assert model.training
    finally:
        model.eval()


def test_cross_passes_on_one_text_run_once(explainer, monkeypatch):
    """Two queries against one long document: one reverse-mode run on the document with both queries' G columns
    as cotangents (its primal pass shared), split back per pair."""
    from simattr.methods.ij import IJJob
    qs, doc = ["a cat", "dogs run fast"], DOCS[0]
    with counting(monkeypatch, IJJob) as counts:
        many = explainer.explain_many(qs, doc, method="ij", steps=2, all_pairs=True)
    assert counts["cross_runs"] == 1 and counts["cross"] == 2
    for q, row in zip(qs, many):
        e = row[0]
        assert e.extras["job"]["how"] == "cross-a"
        assert e.extras["plans"][1]["mode"] == "cross-reverse" and e.extras["plans"][1]["pairs_in_run"] == 2
        np.testing.assert_allclose(e.matrix, explainer.explain(q, doc, steps=2).matrix, atol=1e-6)


def test_one_tower_shares_a_text_across_sides(explainer):
    many = explainer.explain_many(["a cat sat", "the dog"], ["the dog", "a cat sat"], method="bilrp")
    assert many[0].extras["job"]["texts"] == 2  # one encoder: "the dog" as a and as b is one G
    np.testing.assert_allclose(many[1].matrix, many[0].matrix.T, atol=1e-6)


def test_prepared_texts_are_bounded(explainer, monkeypatch):
    """With room for one prepared text the job prepares texts again when it needs them, with the same result."""
    from simattr.methods.ij import IJJob
    made = []
    orig = jobs.Sides.__getitem__

    def spy(self, t):
        side = orig(self, t)
        made.append(self.prepared)
        assert len(self.kept) == 1 or self.bytes <= self.max_bytes
        return side
    monkeypatch.setattr(jobs.Sides, "__getitem__", spy)
    qs, ds = ["a cat", "dogs run"], DOCS[:2]
    small = list(jobs.run(IJJob(explainer.encoder_a, explainer.encoder_a, steps="auto", tol=1e-2), qs, ds,
                          all_pairs=True, side_bytes=1))
    prepared_small = made[-1]
    made.clear()
    big = list(jobs.run(IJJob(explainer.encoder_a, explainer.encoder_a, steps="auto", tol=1e-2), qs, ds,
                        all_pairs=True))
    assert made[-1] == 4 < prepared_small  # every text once with room; again and again without
    for e1, e2 in zip(small, big):
        np.testing.assert_allclose(e1.matrix, e2.matrix, atol=1e-7)
        assert e1.settings["steps"] == e2.settings["steps"] and e1.error == pytest.approx(e2.error, abs=1e-9)


def test_cross_passes_only_for_active_units(explainer):
    """Units without tangent (here [CLS]/[SEP] under the pad reference) have zero G columns: no VJP for them (one
    cotangent for the active unit, one for the known side's f(r): the other side's first-order terms); a known
    side with no active unit at all gives A = 0, its pass only for the first-order terms."""
    e = explainer.explain("dogs", DOCS[0], steps=2)
    cross = [p for p in e.extras["plans"] if p["mode"] == "cross-reverse"]
    assert len(cross) == 1 and cross[0]["reason"].startswith("cross mode: 2 cotangents")
    forward = explainer.explain("dogs", DOCS[0], steps=2, mode="forward")
    np.testing.assert_allclose(e.matrix, forward.matrix, atol=1e-6)
    for side in ("a", "b"):
        np.testing.assert_allclose(e.extras["decomposition"][f"first_order_{side}"],
                                   forward.extras["decomposition"][f"first_order_{side}"], atol=1e-6)
    z = explainer.explain("cats purr", DOCS[0], steps=2, reference=simattr.PerSide("cats purr", "pad"))
    assert not z.matrix.any() and z.extras["decomposition"]["first_order_sum_a"] == 0
    assert z.error == pytest.approx(abs(z.terms["s(a,b)"] - z.terms["s(a,r_b)"] - z.terms["s(r_a,b)"]
                                        + z.terms["s(r_a,r_b)"]), abs=1e-12)


def test_empty_job(explainer):
    from simattr.methods.ij import IJJob
    assert list(jobs.run(IJJob(explainer.encoder_a, explainer.encoder_a, steps=1), [], [])) == []


def test_named_ranges_in_a_profile(explainer):
    """Profiling an explanation shows where the time goes under simattr's own names."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        explainer.explain("a cat", DOCS[0], steps=2)  # cross mode: JVPs on the query, VJPs on the document
        explainer.explain("a cat", "dogs", steps=2, mode="reverse")
    names = {e.key for e in prof.key_averages()}
    for name in ("prepare_text", "begin", "attribution", "cross_run", "jvp_chunk", "vjp_primal", "vjp_chunk",
                 "contract"):
        assert f"simattr::{name}" in names, name


def test_iter_many_streams_and_checks_options_first(explainer):
    with pytest.raises(SimattrError, match="does not take"):
        explainer.iter_many(Q, DOCS, method="ij", rule="cp")  # before any pair
    it = explainer.iter_many(Q, DOCS[:2], method="ij", steps=1)
    first = next(it)
    np.testing.assert_allclose(first.matrix, explainer.explain(Q, DOCS[0], steps=1).matrix, atol=1e-6)
    assert len(list(it)) == 1
    assert explainer.explain_many(Q, DOCS[:1], steps=1)[0].method == "ij"  # the same default as explain
    rows = list(explainer.iter_many(["a cat", "dogs"], DOCS[:2], method="maxsim", all_pairs=True))
    assert len(rows) == 4 and rows[1].tokens_b == explainer.explain("a cat", DOCS[1], method="maxsim").tokens_b


@pytest.mark.parametrize("method", ["ij", "bilrp"])
def test_cache_across_calls(explainer, monkeypatch, method):
    """Explainer(cache_size=N): a text explained again costs no pass of its own; results equal the uncached ones;
    an option G depends on is part of the key."""
    from simattr.methods.bilrp import BiLRPJob
    from simattr.methods.ij import IJJob
    ex = simattr.Explainer(explainer.encoder_a, cache_size=8)
    opts = dict(steps=2) if method == "ij" else {}
    with counting(monkeypatch, IJJob if method == "ij" else BiLRPJob) as counts:
        first = ex.explain(Q, DOCS[0], method=method, **opts)  # the query's G made (cross on the document)
        made_first = len(counts["attribution"])
        second = ex.explain(Q, DOCS[1], method=method, **opts)  # the query's G from the cache
        assert len(counts["attribution"]) == made_first + (0 if second.extras["plans"][1]["mode"] == "cross-reverse"
                                                           else 1)
        assert second.extras["plans"][0].get("cached") is True
        third = ex.explain(Q, DOCS[1], method=method, layer=1, **opts)  # another layer: another G
        assert not third.extras["plans"][0].get("cached")
    assert ex.cache.hits >= 1
    for e, d in ((first, DOCS[0]), (second, DOCS[1])):
        np.testing.assert_allclose(e.matrix, explainer.explain(Q, d, method=method, **opts).matrix, atol=1e-6)
    many = ex.explain_many(Q, DOCS, method=method, **opts)  # jobs use and fill the same cache
    assert many[0].extras["plans"][0].get("cached") is True
    ex.clear_cache()
    assert not ex.explain(Q, DOCS[0], method=method, **opts).extras["plans"][0].get("cached")
    with pytest.raises(SimattrError, match="cache_size"):
        simattr.Explainer(explainer.encoder_a, cache_size=-1)


def test_cached_items_are_free_to_the_planner():
    p = plan_pairs([Item(3, 5, cached=True), Item(8, 20)], [(0, 1)], 384)
    assert p.materialise == {0} and p.cost == 3 * 20
    p = plan_pairs([Item(3, 5, cached=True), Item(8, 20, cached=True)], [(0, 1)], 384)
    assert p.how == ["both"] and p.cost == 0


def test_a_job_leaves_no_process_wide_state_behind(explainer):
    """simattr/runtime.py: the attention registry entries of BiLRP's rules and of the fused attention, the
    ZeroTensor kernels and the model's state are entered for one computation and left after it."""
    from transformers.modeling_utils import AttentionInterface

    from simattr import attention, runtime
    before = set(AttentionInterface._global_mapping)
    model = explainer.encoder_a.model
    state = (model.training, [p.requires_grad for p in model.parameters()], model.config._attn_implementation)
    explainer.explain("a cat sat", "the dog ran", method="bilrp")
    with attention.registered():
        assert runtime.registered(attention.NAME)
        with attention.registered():  # nested users share the entry
            pass
        assert runtime.registered(attention.NAME)
    assert not runtime.registered(attention.NAME)
    it = explainer.iter_many(["a cat sat"], ["the dog ran", "a bird"], steps=2)
    next(it)
    it.close()  # a stream closed early restores everything too
    assert set(AttentionInterface._global_mapping) == before
    assert (model.training, [p.requires_grad for p in model.parameters()], model.config._attn_implementation) == state


def test_explain_many_progress_bar(explainer, capsys):
    rows = explainer.explain_many(["a cat", "birds"], ["a dog", "planes", "x"], method="maxsim", all_pairs=True,
                                  show_progress_bar=True)
    assert [len(r) for r in rows] == [3, 3]
    assert "6/6" in capsys.readouterr().err  # the bar's count on stderr
