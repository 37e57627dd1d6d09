"""Short texts' passes packed into shared launches (issue 13, item 7: `pack=True`, `engine.forward_mode_packed`):
the G's equal each text's own passes (`engine.forward_mode`, the reference: separate code, one text at a time)
on every family, at layer 0 and above, with token types, prompts and sentence-transformers heads; texts that
cannot share a key never share a launch; a batch of short pairs costs fewer launches than texts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import simattr
from simattr import engine, jobs
from tests.conftest import FAMILIES, tiny_model

A = ["a small cat sat down", "dogs", "the old farmer is reading a book tonight", "it rains"]
B = ["the big dog ran", "a bird flew over the sea", "someone reads", "sunny weather all day long"]
IJ = dict(method="ij", steps=3, mode="forward")
BILRP = dict(method="bilrp", mode="forward")


def _packed_plans(explanations):
    return [p["packed"] for e in explanations for p in e.extras["plans"] if p and p.get("packed")]


def _alone_reference(enc, text, layer, method):
    """G of one text by the engine's single-text forward mode (no packing anywhere)."""
    from simattr.methods import bilrp, ij
    from simattr.quadrature import nodes
    with enc.prepared():
        if method == "ij":
            s = ij.prepare_side(enc, text, layer, None, "token", True, False)
            al, w = nodes("riemann_midpoint", 3)
            f, start, delta, tangent = s.f, s.r, s.delta, None
        else:
            s = bilrp.prepare_side(enc, text, layer, "token", "cosine", False)
            f, start, delta, tangent, al, w = (bilrp.modified_function(enc, s.tokens, layer, "cosine"), s.x,
                                               torch.zeros_like(s.x), s.x, [0.0], [1.0])
        D = s.fx.shape[-1]
        shape = engine.Shape.of(enc, s.tokens.length, s.x.shape[-1], D, s.x.dtype)
        p = engine.plan(len(s.units), len(al), shape, mode="forward")
        if method == "ij":
            return engine.path_attribution(f, start, delta, al, w, s.units.matrix, D, p, tangent=tangent)
        from simattr import rules
        with rules.applied([enc.model], "cp", fused_attention=False, bias=bilrp.DEFAULT_BIAS):
            return engine.path_attribution(f, start, delta, al, w, s.units.matrix, D, p, tangent=tangent)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer", [0, 1])
def test_packed_equals_each_text_alone_every_family(tokenizer, family, layer):
    enc = simattr.Encoder(tiny_model(family, dtype=torch.float64), tokenizer, pooling="mean", name=f"tiny-{family}")
    ex = simattr.Explainer(enc)
    for opts in (IJ, BILRP):
        on = list(ex.explain_many(A, B, layer=layer, **opts))
        off = list(ex.explain_many(A, B, layer=layer, pack=False, **opts))
        packs = _packed_plans(on)
        assert packs and max(p["texts"] for p in packs) >= 2, (family, opts["method"])
        assert not _packed_plans(off)
        for x, y in zip(on, off):
            np.testing.assert_allclose(x.matrix, y.matrix, rtol=1e-9, atol=1e-12, err_msg=f"{family} {opts}")
            assert x.error == pytest.approx(y.error, rel=1e-6, abs=1e-12)


def test_packed_g_equals_the_single_text_engine(explainer):
    """Against the engine's one-text forward mode directly (MiniLM, float32): IJ's straight path and BiLRP's
    one step (delta zero, tangent x) — the padded rows and the tangent slots change nothing but rounding."""
    from simattr.methods.bilrp import BiLRPJob
    from simattr.methods.ij import IJJob
    enc = explainer.encoder_a
    texts = A + B
    for Job, opts, method in ((IJJob, dict(steps=3, mode="forward"), "ij"), (BiLRPJob, dict(mode="forward"), "bilrp")):
        job = Job(enc, enc, **opts)
        with job.context():
            sides = [job.side(0, t) for t in texts]
            job.begin({k: s for k, s in enumerate(sides)}, [(0, 1)])
            keys = {job.packing(s)[0] for s in sides}
            assert len(keys) == 1  # one tower, one dtype: one key
            made = job.packed_attributions(sides)
        assert {m[1]["packed"]["texts"] for m in made} == {len(texts)}
        for text, (G, _) in zip(texts, made):
            want = _alone_reference(enc, text, 0, method)
            np.testing.assert_allclose(G.numpy(), want.numpy(), rtol=1e-4, atol=2e-6, err_msg=f"{method} {text}")


def test_a_batch_of_short_pairs_costs_fewer_launches_than_texts(explainer, monkeypatch):
    calls = []
    real = engine._batched_jvp

    def counted(f, xs, tangents):
        calls.append(tuple(tangents.shape[:2]))
        return real(f, xs, tangents)

    monkeypatch.setattr(engine, "_batched_jvp", counted)
    many = list(explainer.explain_many(A, B, **BILRP))
    packed = len(calls)
    calls.clear()
    alone = list(explainer.explain_many(A, B, pack=False, **BILRP))
    assert len(calls) == len(A) + len(B)  # one launch per text
    assert packed <= len(calls) / 2, (packed, len(calls))
    for x, y in zip(many, alone):
        np.testing.assert_allclose(x.matrix, y.matrix, atol=1e-6)
        assert x.extras["seconds"] >= 0


def test_only_texts_of_one_key_share_a_launch(tokenizer, monkeypatch):
    """Two towers (other weights) given the same texts: each tower packs its own, never one text of each; reverse
    mode and a given batch size never pack."""
    from simattr.methods.path import PathJob
    enc_a = simattr.Encoder(tiny_model("bert", seed=0), tokenizer, pooling="mean", name="a")
    enc_b = simattr.Encoder(tiny_model("bert", seed=1), tokenizer, pooling="mean", name="b")
    ex = simattr.Explainer(enc_a, model_b=enc_b)
    towers = []
    real = PathJob.packed_attributions

    def recorded(self, sides):
        towers.append({id(s.encoder) for s in sides})
        return real(self, sides)

    monkeypatch.setattr(PathJob, "packed_attributions", recorded)
    texts = ["a small cat sat down", "the dog ran off", "birds fly south", "it rains a lot"]  # alike: they pack
    on = list(ex.explain_many(texts, texts, **IJ))
    assert len(towers) >= 2 and all(len(t) == 1 for t in towers)  # never a text of a with one of b
    assert len({next(iter(t)) for t in towers}) == 2  # both towers packed their own
    off = list(ex.explain_many(texts, texts, pack=False, **IJ))
    for x, y in zip(on, off):
        np.testing.assert_allclose(x.matrix, y.matrix, rtol=1e-5, atol=1e-7)
    towers.clear()
    list(ex.explain_many(A, B, method="ij", steps=3, mode="reverse"))
    list(ex.explain_many(A, B, internal_batch_size=4, **IJ))
    assert not towers


def test_sentence_transformers_head_and_prompt_pack_as_the_model_scores():
    st_lib = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
    from simattr.encoders.loading import default_model_path
    st = st_lib.SentenceTransformer(modules=[Transformer(str(default_model_path())), Pooling(384, "cls"),
                                             Dense(384, 32), Normalize()], device="cpu",
                                    prompts={"query": "query: ", "document": "passage: "})
    ex = simattr.Explainer(st, task=("query", "document"))
    for opts in (IJ, BILRP):
        on = list(ex.explain_many(A, B, **opts))
        off = list(ex.explain_many(A, B, pack=False, **opts))
        assert _packed_plans(on)
        for x, y in zip(on, off):
            np.testing.assert_allclose(x.matrix, y.matrix, rtol=1e-4, atol=1e-6)
            assert x.score == pytest.approx(y.score, abs=1e-6)


@pytest.mark.parametrize("failure", [
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
    simattr.NumericalError("NaN or Inf in the attribution (G)"),  # e.g. a padded row with every key masked
])
def test_a_pack_out_of_memory_or_not_finite_falls_back_to_each_text_alone(explainer, monkeypatch, failure):
    def oom(*args, **kwargs):
        raise failure

    want = list(explainer.explain_many(A, B, pack=False, **BILRP))
    monkeypatch.setattr(engine, "forward_mode_packed", oom)
    got = list(explainer.explain_many(A, B, **BILRP))
    assert not _packed_plans(got)
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x.matrix, y.matrix)


def test_pack_choice_follows_the_order_of_use_and_the_waste_bound():
    """The packmate choice itself (`_Attributions.pack_for`) on a stub job: same key only, the launch capacity
    and PACK_WASTE respected, texts already made or cached skipped."""
    class Stub:
        info = {0: ("k", 4, 2, 10), 1: ("k", 4, 2, 10), 2: ("other", 4, 2, 10), 3: ("k", 4, 2, 40),
                4: ("k", 5, 2, 10), 5: None, 6: ("k", 4, 2, 10)}

        def packing(self, side):
            return self.info[side]

        def launch_capacity(self, side, seq):
            return 26  # slots x rows

    class P:
        ids = [(0, 1), (2, 3), (4, 5), (6, 0)]
        items = [jobs.Item(4, 10) for _ in range(7)]

        class pairs:
            how = ["both"] * 4

        def known_and_other(self, q):
            return P.ids[q]

    made = jobs._Attributions(Stub(), P(), {t: t for t in range(7)}, None)
    # 1 joins; 2 has another key; 3 would pad 10-token rows to 40; 4: 5 slots x 6 rows = 30 > 26; 5 cannot pack;
    # 6: 4 slots x 6 rows = 24 fits
    assert made.pack_for(0) == [0, 1, 6]
    made.G[1] = "made"
    assert made.pack_for(0) == [0, 4]


def test_bilrp_prepares_a_job_s_texts_in_batches(explainer, monkeypatch):
    """BiLRP's hidden states and embeddings of a job's texts come from batched forward passes (`sides_batch`, up
    to SIDE_BATCH texts of a tower at once), equal to each text prepared alone."""
    from simattr.methods.bilrp import BiLRPJob
    one, many = [], []
    real_side, real_batch = BiLRPJob.side, BiLRPJob.sides_batch
    monkeypatch.setattr(BiLRPJob, "side", lambda self, tower, text: one.append(text) or real_side(self, tower, text))
    monkeypatch.setattr(BiLRPJob, "sides_batch",
                        lambda self, tower, texts: many.append(len(texts)) or real_batch(self, tower, texts))
    on = list(explainer.explain_many(A, B, method="bilrp"))
    assert not one and sum(many) == len(A) + len(B) and len(many) <= 2  # a batch per tower
    many.clear()
    off = list(explainer.explain_many(A, B, method="bilrp", pack=False))
    assert len(one) == len(A) + len(B) and not many
    for x, y in zip(on, off):
        np.testing.assert_allclose(x.matrix, y.matrix, atol=1e-6)
        assert x.score == pytest.approx(y.score, abs=1e-6) and x.error == pytest.approx(y.error, rel=1e-4, abs=1e-7)


def test_a_head_that_mixes_positions_never_packs():
    """A sentence-transformers CNN reads neighbouring positions without the mask: padded rows would change a
    text's embedding, so its texts run alone (`ROW_WISE_HEAD_MODULES`) and pack=True equals pack=False."""
    st_lib = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer.modules import CNN, Pooling, Transformer
    from simattr.encoders.loading import default_model_path
    torch.manual_seed(0)
    st = st_lib.SentenceTransformer(modules=[Transformer(str(default_model_path())),
                                             CNN(384, out_channels=16, kernel_sizes=[3]), Pooling(16, "mean")],
                                    device="cpu")
    ex = simattr.Explainer(st)
    for opts in (IJ, BILRP):
        on = list(ex.explain_many(A, B, **opts))
        assert not _packed_plans(on)
        for x, y in zip(on, ex.explain_many(A, B, pack=False, **opts)):
            np.testing.assert_allclose(x.matrix, y.matrix, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pack", [True, False])
def test_each_g_s_time_is_charged_once(explainer, pack):
    """Cross runs of short queries on one document: the pairs' seconds add up to the job's wall time (each G's
    time, a pack's share included, charged to the first pair that uses it), never twice."""
    import time
    queries = ["cats", "dogs", "a bird", "it rains", "red car", "old man"]
    doc = ["the old farmer is reading a long book about cats and dogs by the fire tonight while it rains outside"]
    t0 = time.perf_counter()
    es = list(explainer.explain_many(queries, doc, method="bilrp", mode="cross", pack=pack))
    wall = time.perf_counter() - t0
    seconds = [e.extras["seconds"] for e in es]
    assert all(s >= 0 for s in seconds)
    assert 0.5 * wall <= sum(seconds) <= 1.02 * wall, (seconds, wall)


@pytest.mark.parametrize("pack", [True, False])
def test_a_cached_g_evicted_during_the_job_is_made_again(pack):
    """The plan counts a text's cached G as free; the job's own puts may evict it before its pair: then it is made."""
    ex = simattr.Explainer(cache_size=4)
    list(ex.explain_many(["q"], ["d1 here", "d2 there", "d3 again"], method="bilrp", mode="forward", pack=pack))
    got = list(ex.explain_many(["n1", "n3", "q"], ["n2", "n4", "d1 here"], method="bilrp", mode="forward", pack=pack))
    want = simattr.Explainer().explain("q", "d1 here", method="bilrp", mode="forward", pack=pack)
    np.testing.assert_allclose(got[2].matrix, want.matrix, atol=1e-6)
