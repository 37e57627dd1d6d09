"""The PyLate ColBERT checkpoint of tests/fixtures/pylate-minilm, assembled from the bundled all-MiniLM-L6-v2 (the
fixture keeps PyLate's configuration files, its projection and the two embedding rows it added for `[Q] ` and
`[D] `; see its README). Used by tests/test_late_interaction.py and benchmarks/bench_late_interaction.py.

    python tests/pylate_fixture.py DIR     # assemble it into DIR
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pylate-minilm"


def reference() -> dict:
    """PyLate's own outputs on the checkpoint (queries, documents, colbert_scores, token-vector shapes)."""
    return json.loads((FIXTURE / "reference.json").read_text())


def assemble(out: Path) -> Path:
    """Write the checkpoint into `out` (a new directory) and return it."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from simattr.encoders.loading import default_model_path
    out = Path(out)
    shutil.copytree(FIXTURE, out, ignore=shutil.ignore_patterns("reference.json", "README.md",
                                                                 "added_embeddings.safetensors"))
    model = AutoModel.from_pretrained(str(default_model_path()))
    rows = load_file(str(FIXTURE / "added_embeddings.safetensors"))["added_rows"]
    model.resize_token_embeddings(model.config.vocab_size + rows.shape[0])
    with torch.no_grad():
        model.get_input_embeddings().weight[-rows.shape[0]:] = rows
    model.save_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    tok.add_tokens(["[Q] ", "[D] "])
    tok.save_pretrained(str(out))
    for name in ("config.json", "tokenizer_config.json"):  # PyLate's own, as it wrote them
        shutil.copy(FIXTURE / name, out / name)
    return out


if __name__ == "__main__":
    print(assemble(Path(sys.argv[1])))
