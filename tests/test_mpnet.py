"""The second real encoder, all-mpnet-base-v2 (MPNet, 12 blocks, D = 768): loading, scores, IJ at several layers.

The model is assembled once from its five PyPI parts (tests/real_models.py) into .cache/models."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.mpnet

A, B = "A man is playing a guitar.", "Someone plays an instrument."


def test_loads_as_sentence_transformers_computes_it(mpnet, mpnet_dir):
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(str(mpnet_dir), device="cpu")
    texts = [A, B, "A woman slices an onion.", "The committee postponed its decision."]
    ref = torch.nn.functional.normalize(st.encode(texts, convert_to_tensor=True), dim=-1)
    enc = mpnet.encoder_a
    assert enc.describe()["architecture"] == "MPNetModel" and enc.num_layers == 12 and enc.normalized
    with enc.prepared(), torch.no_grad():
        ours = []
        for t in texts:
            tok = enc.tokenize(t)
            for layer in (0, 7):  # f from any block's input gives the model's embedding
                ours.append(enc.function(tok, layer, normalize=True)(enc.hidden(tok, layer))[0])
    ours = torch.stack(ours).view(len(texts), 2, -1)
    np.testing.assert_allclose(ours[:, 0].numpy(), ref.numpy(), atol=2e-5)
    np.testing.assert_allclose(ours[:, 1].numpy(), ref.numpy(), atol=2e-5)
    cos = float(ref[0] @ ref[1])
    assert 0.3 < cos < 0.9


def test_ij_default_converges_at_a_late_layer(mpnet):
    e = mpnet.explain(A, B, layer=8)
    assert e.settings["steps"] == "auto" and e.extras["converged"] is True
    assert e.error <= 1e-3 and e.extras["relative_error"] == pytest.approx(e.error / abs(e.score))
    t = e.terms
    assert e.total == pytest.approx(t["s(a,b)"] - t["s(a,r_b)"] - t["s(r_a,b)"] + t["s(r_a,r_b)"], abs=1e-3)
    assert e.matrix.shape == (9, 7)


def test_ij_at_layer_0_in_float32_says_it_did_not_converge(mpnet):
    """The straight path at MPNet's layer 0 passes a near-singular point (docs: the integrand reaches thousands
    times its median over ~1e-5 of α): within a small budget the result says so, in extras, the report and a
    warning."""
    with pytest.warns(UserWarning, match="above tol"):
        e = mpnet.explain(A, B, layer=0, max_steps=28)
    assert e.extras["converged"] is False and e.error > 1e-3
    assert all(n <= 28 for n in e.extras["steps_used"])
    assert "NOT CONVERGED" in e.format()
