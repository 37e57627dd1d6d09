"""Long inputs run chunked to a memory budget; the chunking does not change the numbers."""
import numpy as np
import pytest
import torch

import simattr
from simattr import engine
from tests.conftest import tiny_model


def _long_encoder(tokenizer):
    import transformers as tf
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=0)
    model = tf.AutoModel.from_config(cfg, attn_implementation="eager").eval()
    return simattr.Encoder(model, tokenizer, pooling="mean")


def test_512_tokens_within_a_small_budget(tokenizer):
    enc = _long_encoder(tokenizer)
    text = " ".join(["word"] * 510)
    assert enc.tokenize(text).length == 512
    with pytest.raises(simattr.SimattrError, match=r"max_memory=8.0 MB cannot hold one reverse-mode chunk of this "
                                                   r"512-token text \(one tangent at one path node needs about"):
        simattr.explain(text, "short text", model=enc, steps=1, max_memory="8MB", mode="reverse")
    small = simattr.explain(text, "short text", model=enc, steps=1, max_memory="64MB", mode="reverse")
    big = simattr.explain(text, "short text", model=enc, steps=1, max_memory="4GB", mode="reverse")
    plan_small, plan_big = small.extras["plans"][0], big.extras["plans"][0]
    assert plan_small["mode"] == "reverse"
    assert plan_small["estimated_bytes"] <= 64 << 20
    assert plan_small["unit_chunk"] < plan_big["unit_chunk"]
    np.testing.assert_allclose(small.matrix, big.matrix, atol=1e-6)
    cross = simattr.explain(text, "short text", model=enc, steps=1, max_memory="64MB")  # auto: 510 vs 2 units
    assert cross.extras["plans"][0]["mode"] == "cross-reverse"
    np.testing.assert_allclose(cross.matrix, big.matrix, atol=1e-6)
    mid = " ".join(["word"] * 62)
    fwd_small = simattr.explain(mid, "short text", model=enc, steps=2, max_memory="1MB", mode="forward")
    fwd_big = simattr.explain(mid, "short text", model=enc, steps=2, mode="forward")
    rev = simattr.explain(mid, "short text", model=enc, steps=2, mode="reverse")
    assert fwd_small.extras["plans"][0]["unit_chunk"] < fwd_big.extras["plans"][0]["unit_chunk"]
    np.testing.assert_allclose(fwd_small.matrix, fwd_big.matrix, atol=1e-6)
    np.testing.assert_allclose(rev.matrix, fwd_big.matrix, atol=1e-6)


def test_planner_prefers_fewer_passes():
    shape = engine.Shape(seq=40, hidden=384, out_dim=384)
    assert engine.plan(40, 50, shape).mode == "forward"
    assert engine.plan(500, 50, engine.Shape(seq=500, hidden=384, out_dim=384)).mode == "reverse"
    assert engine.plan(10, 50, shape, mode="reverse").mode == "reverse"
    p = engine.plan(40, 50, shape, budget=64 << 20)
    assert p.estimated_bytes <= 64 << 20 or p.unit_chunk * p.node_chunk == 1
    assert engine.parse_memory("1.5GB") == int(1.5 * (1 << 30)) and engine.parse_memory(1000) == 1000
