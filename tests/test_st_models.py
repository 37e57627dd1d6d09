"""sentence-transformers models as they are: what `SentenceTransformer.encode` (encode_query / encode_document) and
`similarity` compute is what simattr decomposes — module stacks with Dense heads, CLS and max pooling, prompts
(held as context or shown), Pooling(include_prompt=False), a Router's query and document routes as two towers,
directories saved by sentence-transformers. The reference is sentence-transformers itself."""
from __future__ import annotations

import pytest
import torch

import simattr
from simattr.encoders.loading import default_model_path

st_lib = pytest.importorskip("sentence_transformers")
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Router, Transformer  # noqa: E402

Q, D = "how long do cats sleep", "Cats sleep for most of the day."


def _transformer():
    return Transformer(str(default_model_path()))


def _st(*modules, **kw):
    return st_lib.SentenceTransformer(modules=list(modules), device="cpu", **kw)


def _scores(st, query, doc, **kw):
    """sentence-transformers' own score of the pair: encode_query / encode_document (or encode) + similarity."""
    if kw.pop("tasks", True):
        qa = st.encode_query([query], convert_to_tensor=True, **kw)
        db = st.encode_document([doc], convert_to_tensor=True, **kw)
    else:
        qa = st.encode([query], convert_to_tensor=True, **kw)
        db = st.encode([doc], convert_to_tensor=True, **kw)
    return float(st.similarity(qa, db)[0, 0])


def _check_path_methods(ex, want, query=Q, doc=D, steps=32, tol=2e-3):
    bilrp = ex.explain(query, doc, method="bilrp")
    assert bilrp.score == pytest.approx(want, abs=1e-5)
    ij = ex.explain(query, doc, steps=steps)
    assert ij.score == pytest.approx(want, abs=1e-5)
    target = sum(v * s for v, s in zip(ij.terms.values(), (1, -1, -1, 1)))
    assert ij.total == pytest.approx(target, abs=tol)  # completeness of the model as it scores
    assert ij.error == pytest.approx(abs(ij.total - target), abs=1e-9)
    return ij, bilrp


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_dense_head_and_pooling_modes_are_the_model_s(mode):
    torch.manual_seed(0)
    t = _transformer()
    st = _st(t, Pooling(384, pooling_mode=mode), Dense(384, 48), Normalize())
    want = _scores(st, Q, D, tasks=False)
    ex = simattr.Explainer(st)
    assert ex.encoder_a.head is not None and ex.encoder_a.normalized
    # max pooling: the Jacobian jumps wherever an argmax changes along the path (hundreds of points), so
    # quadrature converges slowly (measured: 1.5e-3 at 511 adaptive nodes, 4e-3 at 32 uniform steps)
    _check_path_methods(ex, want, steps=32, tol=2e-3 if mode == "cls" else 1e-2)


def test_prompts_are_put_before_the_text_and_held_as_context():
    st = _st(_transformer(), Pooling(384), Normalize(), prompts={"query": "query: ", "document": "passage: "})
    want = _scores(st, Q, D)  # encode_query: the "query" prompt; encode_document: the "document" one
    ex = simattr.Explainer(st, task=("query", "document"))
    assert (ex.encoder_a.prompt, ex.encoder_b.prompt) == ("query: ", "passage: ")
    ij, bilrp = _check_path_methods(ex, want)
    for e in (ij, bilrp):  # the prompt's tokens are not in the result; extras say what the prompt was
        assert "query" not in e.tokens_a and "passage" not in e.tokens_b
        assert e.extras["prompt"]["a"] == {"text": "query: ", "tokens": 2, "shown": False}
    # IJ: the prompt is fixed along the path, so the matrix holds all of the similarity change
    assert ij.error < 2e-3
    maxsim = ex.explain(Q, D, method="maxsim")
    assert maxsim.tokens_a == ij.tokens_a and maxsim.extras["prompt"]["b"]["tokens"] == 2

    shown = simattr.Explainer(st, task=("query", "document"), include_prompt=True).explain(Q, D, steps=32)
    assert shown.score == pytest.approx(want, abs=1e-5)
    assert shown.tokens_a[1:3] == ["query", ":"] and shown.extras["prompt"]["a"]["units"] == [1, 2]
    assert shown.error < 2e-3  # completeness holds with the prompt explained too
    assert abs(shown.matrix[1:3].sum()) > 1e-4  # and the prompt now carries part of it


def test_prompt_name_prompt_text_and_default_prompt_name():
    st = _st(_transformer(), Pooling(384), Normalize(), prompts={"q": "search query: ", "d": "search document: "},
             default_prompt_name="q")
    want = float(st.similarity(st.encode([Q], prompt_name="q", convert_to_tensor=True),
                               st.encode([D], prompt_name="d", convert_to_tensor=True))[0, 0])
    assert simattr.Explainer(st, prompt_name=("q", "d")).explain(Q, D, method="bilrp").score == pytest.approx(
        want, abs=1e-5)
    assert simattr.Explainer(st, prompt=("search query: ", "search document: ")).explain(
        Q, D, method="bilrp").score == pytest.approx(want, abs=1e-5)
    default = float(st.similarity(*(st.encode([t], convert_to_tensor=True) for t in (Q, D)))[0, 0])
    e = simattr.Explainer(st).explain(Q, D, method="bilrp")  # default_prompt_name on both sides, as encode does
    assert e.score == pytest.approx(default, abs=1e-5) and e.extras["prompt"]["b"]["text"] == "search query: "
    with pytest.raises(simattr.SimattrError, match="no prompt named 'x'; its prompts: .*'q', 'd'"):
        simattr.Explainer(st, prompt_name="x")
    with pytest.raises(simattr.SimattrError, match="not both"):
        simattr.Explainer(st, prompt="a: ", prompt_name="q")
    with pytest.raises(simattr.SimattrError, match="no Router"):
        simattr.Explainer(st, task="summary")
    # spans index the tokens as the result shows them (the held prompt not counted)
    spanned = simattr.Explainer(st, prompt_name="q").explain(Q, D, method="bilrp", units=[(4, 6)])
    assert "catssleep" in spanned.tokens_a
    with pytest.raises(simattr.SimattrError, match="outside the 7 tokens .a prompt's 3 tokens"):
        simattr.Explainer(st, prompt_name="q").explain(Q, D, steps=2, units=[(6, 9)])


def test_pooling_without_the_prompt_is_the_model_s():
    """Pooling(include_prompt=False) (INSTRUCTOR-style): the prompt is seen by attention but not pooled."""
    st = _st(_transformer(), Pooling(384, include_prompt=False), Normalize(),
             prompts={"query": "Represent the question for retrieval: "})
    want = _scores(st, Q, D)
    with_prompt = _st(_transformer(), Pooling(384), Normalize(),
                      prompts={"query": "Represent the question for retrieval: "})
    assert abs(_scores(with_prompt, Q, D) - want) > 1e-4  # the pooling choice matters
    ex = simattr.Explainer(st, task=("query", "document"))
    assert not ex.encoder_a.pool_include_prompt
    _check_path_methods(ex, want)


def test_a_router_s_query_and_document_routes_are_two_towers():
    torch.manual_seed(0)
    router = Router.for_query_document(
        query_modules=[_transformer(), Pooling(384, pooling_mode="cls"), Dense(384, 64)],
        document_modules=[_transformer(), Pooling(384), Dense(384, 64)])
    st = _st(router, Normalize())
    want = _scores(st, Q, D)
    ex = simattr.Explainer(st)  # a Router: a is the query, b the document
    assert (ex.encoder_a.route, ex.encoder_b.route) == ("query", "document")
    assert ex.encoder_a.model is not ex.encoder_b.model
    _check_path_methods(ex, want)
    both_docs = simattr.Explainer(st, task="document")
    assert both_docs.encoder_a is both_docs.encoder_b  # one tower
    db = st.encode_document([Q, D], convert_to_tensor=True)
    assert both_docs.explain(Q, D, method="bilrp").score == pytest.approx(float(st.similarity(db[:1], db[1:])[0, 0]),
                                                                          abs=1e-5)
    with pytest.raises(simattr.SimattrError, match="no route for task='summary'"):
        simattr.Explainer(st, task=("query", "summary"))


def test_a_saved_directory_loads_as_the_object_does(tmp_path):
    torch.manual_seed(0)
    st = _st(_transformer(), Pooling(384, pooling_mode="max"), Dense(384, 32), Normalize(),
             prompts={"query": "query: ", "document": "passage: "})
    st.save(str(tmp_path / "dense"))
    plain = _st(_transformer(), Pooling(384, include_prompt=False), Normalize(), prompts={"query": "query: "})
    plain.save(str(tmp_path / "plain"))
    for model, path in ((st, tmp_path / "dense"), (plain, tmp_path / "plain")):
        want = _scores(model, Q, D)
        got = simattr.Explainer(str(path), task=("query", "document")).explain(Q, D, method="bilrp")
        assert got.score == pytest.approx(want, abs=1e-5)


@pytest.mark.mpnet
def test_mpnet_with_a_prompt_is_what_sentence_transformers_computes(mpnet_dir):
    st = st_lib.SentenceTransformer(str(mpnet_dir), device="cpu", prompts={"query": "query: "})
    want = _scores(st, Q, D)
    ex = simattr.Explainer(st, task=("query", "document"))
    e = ex.explain(Q, D, method="bilrp")
    assert e.score == pytest.approx(want, abs=1e-5) and e.extras["prompt"]["a"]["tokens"] >= 2
    ij = ex.explain(Q, D, steps=16, layer=10)
    assert ij.score == pytest.approx(want, abs=1e-5) and ij.error < 5e-3


class _Runtime:
    """Stands in for an ONNX Runtime / OpenVINO model (optimum's ORTModel): callable like the transformers model,
    tensors out, no parameters and no autograd graph. A real ONNX-backed SentenceTransformer cannot be built here:
    optimum-onnx (the registry's 0.1.0) needs transformers < 4.58, sentence-transformers 6 needs transformers 5."""

    def __init__(self, model):
        self._model = model

    def __call__(self, input_ids, attention_mask, **kw):
        with torch.no_grad():
            return self._model(input_ids=input_ids, attention_mask=attention_mask, **kw)


def test_an_onnx_or_openvino_model_runs_the_set_based_methods_only():
    st = _st(_transformer(), Pooling(384), Normalize())
    torch_maxsim = simattr.Explainer(st).explain(Q, D, method="maxsim")
    runtime = _Runtime(st[0].model)
    del st[0]._modules["model"]
    object.__setattr__(st[0], "model", runtime)
    st.backend = "onnx"
    ex = simattr.Explainer(st)
    for method in ("ij", "bilrp"):
        with pytest.raises(simattr.SimattrError, match="onnx backend, whose graph has no gradients: IJ and BiLRP need "
                                                      "the PyTorch model"):
            ex.explain(Q, D, method=method, steps=2) if method == "ij" else ex.explain(Q, D, method=method)
    m = ex.explain(Q, D, method="maxsim")
    assert m.score == pytest.approx(torch_maxsim.score, abs=1e-5) and m.tokens_a == torch_maxsim.tokens_a


def test_the_command_line_takes_prompts_tasks_and_truncate_dim(tmp_path, capsys):
    import json

    from simattr.cli import main
    st = _st(_transformer(), Pooling(384), Normalize(), prompts={"query": "query: ", "document": "passage: "})
    st.save(str(tmp_path / "m"))
    assert main(["explain", Q, D, "--model", str(tmp_path / "m"), "--method", "bilrp", "--task-a", "query",
                 "--task-b", "document", "--truncate-dim", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = _st(_transformer(), Pooling(384), Normalize(), prompts={"query": "query: ", "document": "passage: "},
              truncate_dim=64)
    assert out["score"] == pytest.approx(_scores(ref, Q, D), abs=1e-5)
    assert out["prompt"]["a"]["text"] == "query: " and out["prompt"]["b"]["text"] == "passage: "
    assert main(["explain", Q, D, "--model", str(tmp_path / "m"), "--prompt-a", "search: ", "--include-prompt",
                 "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens_a"][1] == "search" and out["prompt"]["a"]["units"] == [1, 2] and out["prompt"]["b"] is None


def test_max_seq_length_is_the_model_s():
    st = _st(_transformer(), Pooling(384), Normalize())
    st.max_seq_length = 8
    long = "a cat sat on the warm mat by the door all day"
    with pytest.raises(simattr.SimattrError, match="over the model's maximum of 8"):
        simattr.Explainer(st).explain(long, D, method="bilrp")
    e = simattr.Explainer(st).explain(long, D, method="bilrp", truncate=True)  # cut as encode cuts it
    assert len(e.tokens_a) == 8
    assert e.score == pytest.approx(_scores(st, long, D, tasks=False), abs=1e-5)


@pytest.mark.parametrize("mode", ["cls", "lasttoken"])
def test_cls_and_last_token_pooling_without_the_prompt(mode):
    """Pooling(include_prompt=False) with cls / lasttoken: the first / last position the mask keeps, as
    sentence-transformers pools them."""
    st = _st(_transformer(), Pooling(384, pooling_mode=mode, include_prompt=False), Normalize(),
             prompts={"query": "query: ", "document": "passage: "})
    want = _scores(st, Q, D)
    assert simattr.Explainer(st, task=("query", "document")).explain(Q, D, method="bilrp").score == pytest.approx(
        want, abs=1e-5)


def test_a_byte_level_bpe_prompt_is_found_by_character_offsets():
    """A byte-level BPE tokenizes "query: " alone as `query : Ġ` but "query: how" as `query : Ġhow`: the prompt's
    tokens are the ones inside the prompt's characters (sentence-transformers' count would take `Ġhow`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel
    corpus = ["query: how long do cats sleep", "passage: Cats sleep for most of the day.", "dogs bark"] * 50
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", cls_token="<s>", sep_token="</s>")
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64, pad_token_id=1))
    e = simattr.Explainer(model, tokenizer=tok, prompt=("query: ", None)).explain(Q, "Cats sleep.", method="bilrp")
    assert e.tokens_a[:2] == ["<s>", "Ġhow"] and e.extras["prompt"]["a"]["tokens"] == 2


def test_weighted_layer_pooling_is_refused_with_the_reason():
    from sentence_transformers.sentence_transformer.modules import WeightedLayerPooling
    t = Transformer(str(default_model_path()), config_kwargs={"output_hidden_states": True})
    st = _st(t, WeightedLayerPooling(384, 6, layer_start=4), Pooling(384), Normalize())
    with pytest.raises(simattr.SimattrError, match="WeightedLayerPooling reads the hidden states of every layer"):
        simattr.Explainer(st)
