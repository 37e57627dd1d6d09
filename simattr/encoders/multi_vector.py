"""Late-interaction (ColBERT) towers: `MultiVectorTower` runs one task ("query" or "document") of a
sentence-transformers `MultiVectorEncoder` — PyLate and Stanford-NLP ColBERT checkpoints load as one — through its
own modules: the Transformer module's preprocessing (the task's prefix such as [Q] / [D], query expansion with mask
tokens, the task's length), the transformers model, then the modules after it (the projection, the scoring mask with
its skiplist, the per-token normalisation).

A text's embedding, for the path methods, is the vector of its scoring tokens' embeddings one after another
([K · dim]: K tokens kept by the scoring mask); the score of a query q and a document d is MaxSim,
s = Σ_i max_j q_i · d_j (meanmaxsim: divided by the query's K), which `methods.path.MaxSimForm` decomposes with the
argmax fixed at the input.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import SimattrError, warn
from .base import Tokens, _clip, l2
from .hf import Encoder

#: sentence-transformers' names of the late-interaction similarity functions
MAXSIM_FUNCTIONS = ("maxsim", "meanmaxsim")


def is_multi_vector_model(obj) -> bool:
    """A sentence-transformers MultiVectorEncoder object."""
    return isinstance(obj, nn.Sequential) and type(obj).__name__ == "MultiVectorEncoder"


class MultiVectorTower(Encoder):
    """One task's tower of a sentence-transformers MultiVectorEncoder (see the module docstring)."""

    multi_vector = True

    def __init__(self, mve, task: str = "query", name: str = "multi-vector"):
        if task not in ("query", "document"):
            raise SimattrError(f"a multi-vector model encodes a 'query' or a 'document', got task={task!r}")
        first = mve[0]
        if not hasattr(first, "auto_model") or not isinstance(first.auto_model, nn.Module):
            raise SimattrError(f"{name}: the multi-vector model does not start with a PyTorch Transformer module")
        modules = list(mve)[1:]
        self.normalizes = bool(modules) and type(modules[-1]).__name__ == "Normalize"
        stack = modules[:-1] if self.normalizes else modules
        super().__init__(first.auto_model, first.tokenizer, pooling="mean", head=nn.Sequential(*stack),
                         normalized=False, max_length=first.max_seq_length, name=name)
        self.source, self.task, self.route = mve, task, None
        self.user_max_length = None  # max_length= given to load_encoder: the preprocessing's length where it applies
        self.transformer = first
        self.similarity_fn = str(getattr(mve, "similarity_fn_name", None) or "maxsim").lower()
        self.prompts = dict(getattr(mve, "prompts", None) or {})
        self.default_prompt_name = getattr(mve, "default_prompt_name", None)


    def describe(self) -> dict:
        out = super().describe()
        out.update(pooling="none (multi-vector)", task=self.task, similarity=self.similarity_fn)
        return out

    # ------------------------------------------------------------------ tokenization, as the model's preprocess
    def _token_limit(self, max_length: Optional[int]) -> int:
        return 10 ** 9  # the model's own preprocessing cuts a text; `tokenize` compares with this untruncated count

    def tokenize(self, text, truncate: bool = False, max_length: Optional[int] = None) -> Tokens:
        plain = super().tokenize(text)  # the checks of any text, and its untruncated tokens
        prompt = self.prompt or ""
        kw = {"max_length": self.user_max_length} if self.user_max_length else {}
        if self.task == "query" and (self.transformer.query_expansion or {}).get("strategy") == "fixed":
            kw = {}  # a fixed expansion fixes the query's width (sentence-transformers ignores max_length there)
        feats = self.transformer.preprocess([text], prompt=prompt or None, task=self.task, **kw)
        ids, attn = feats["input_ids"], feats["attention_mask"]
        expansion = feats.get("query_expansion_positions")
        real = int(ids.shape[1] - (int(expansion.sum()) if expansion is not None else 0))
        truncated = real < plain.length
        if truncated and not truncate:
            raise SimattrError(f"text has {plain.length} tokens{' (with the prompt)' if prompt else ''}, over the "
                               f"model's {self.task} length of {real}; shorten it or pass truncate=True "
                               f"(--truncate) to cut it")
        if truncated:
            warn(f"text {_clip(text)} truncated from {plain.length} to {real} tokens (the {self.task} length)")
        id_list = ids[0].tolist()
        unk = getattr(self.tokenizer, "unk_token_id", None)
        special_ids = set(self.tokenizer.all_special_ids) - {unk}
        special = [i in special_ids for i in id_list]
        words = list(plain.word_ids[:real]) + [None] * (len(id_list) - real)
        flags = (plain.prompt_flags or [False] * plain.length)[:real] + [False] * (len(id_list) - real)
        extra = {}
        if "token_type_ids" in feats and "token_type_ids" in self._forward_args():
            extra["token_type_ids"] = feats["token_type_ids"].to(self.device)
        tokens = Tokens(text=text, input_ids=ids.to(self.device), attention_mask=attn.to(self.device), extra=extra,
                        tokens=self.tokenizer.convert_ids_to_tokens(id_list), special=special,
                        word_ids=[None if s else w for s, w in zip(special, words)], truncated=truncated,
                        prompt_length=int(feats.get("prompt_length") or 0) if prompt else 0,
                        prompt_shown=bool(self.include_prompt), prompt_text=prompt,
                        prompt_flags=flags if prompt else None)
        tokens.expansion = None if expansion is None else expansion.to(self.device).bool()
        tokens.scoring = self._scoring_positions(tokens)
        if not tokens.scoring:
            raise SimattrError(f"text {_clip(text)} has no token that the model scores (its skiplist takes all)")
        return tokens

    def _scoring_positions(self, tokens: Tokens) -> list:
        """The positions the model's scoring mask keeps (MultiVectorMask: real tokens, expansion positions of a
        query, minus a document's skiplist)."""
        feats = {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask}
        if tokens.expansion is not None:
            feats["query_expansion_positions"] = tokens.expansion
        for mod in self.head:
            if type(mod).__name__ == "MultiVectorMask":
                feats = mod(dict(feats), task=self.task)
        return [k for k, keep in enumerate(feats["attention_mask"][0].bool().tolist()) if keep]

    def pad_ids(self, tokens: Tokens) -> Tensor:
        ids = super().pad_ids(tokens)
        if getattr(tokens, "expansion", None) is not None:  # expansion tokens are the model's, not the text's
            ids = torch.where(tokens.expansion[0], tokens.input_ids[0], ids[0]).unsqueeze(0)
        return ids

    # ------------------------------------------------------------------ the function f
    def _vectors(self, hidden: Tensor, tokens: Tokens, own_norm: bool) -> Tensor:
        n = hidden.shape[0]
        feats = {"token_embeddings": hidden, "attention_mask": tokens.attention_mask.expand(n, -1),
                 "input_ids": tokens.input_ids.expand(n, -1)}
        if tokens.expansion is not None:
            feats["query_expansion_positions"] = tokens.expansion.expand(n, -1)
        for mod in self.head:
            kw = {"task": self.task} if "task" in getattr(mod, "forward_kwargs", ()) else {}
            feats = mod(feats, **kw)
        vec = feats["token_embeddings"][:, tokens.scoring]
        if own_norm and self.normalizes:
            vec = l2(vec)
        return vec

    def function(self, tokens: Tokens, layer: int, normalize: bool, own_norm: bool = True) -> Callable:
        """f: x [N, S, H] at the input of block `layer` -> the scoring tokens' vectors [N, K * dim] (normalised per
        token as the model does, unless own_norm=False: BiLRP holds those norms itself)."""
        if normalize:
            raise SimattrError("a multi-vector model scores by MaxSim of its token vectors: sim must be 'auto'")
        return super().function(tokens, layer, normalize=False, own_norm=own_norm)

    def pack_key(self, tokens: Tokens):
        return None  # [K·dim] outputs differ per text: each text runs alone

    def _output(self, hidden: Tensor, tokens: Tokens, normalize: bool, own_norm: bool) -> Tensor:
        return self._vectors(hidden, tokens, own_norm).flatten(1)

    @torch.no_grad()
    def token_vectors(self, tokens: Tokens) -> Tensor:
        """The scoring tokens' vectors [K, dim], as the model's encode gives them."""
        hidden = self._run(tokens.input_ids, tokens)
        return self._vectors(hidden, tokens, own_norm=True)[0]
