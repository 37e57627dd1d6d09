"""The encoder interface: what the engine and the methods use of a tower (`BaseEncoder`), one tokenized text
(`Tokens`), pooling, and `prepared` (model state during a computation). Implementations: `hf.Encoder` (Hugging Face
and sentence-transformers models), `callable.CallableEncoder` (plain functions); loading: `loading.load_encoder`.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import SimattrError, warn

POOLINGS = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")


@dataclass
class Tokens:
    """One tokenized text: ids, mask and the tokenizer's own token strings."""

    text: str
    input_ids: Tensor  # [1, S]
    attention_mask: Tensor  # [1, S]
    extra: dict  # other model inputs (token_type_ids)
    tokens: list  # convert_ids_to_tokens, in order
    special: list  # bool per token
    word_ids: list  # word index per token, None for special tokens
    truncated: bool = False

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])


def pool(hidden: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Pool token states [N, S, H] with mask [N, S] into [N, H]."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    if mode == "mean_sqrt_len_tokens":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9).sqrt()
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if mode == "lasttoken":
        last = mask.long().sum(1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise SimattrError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLINGS)}")


class BaseEncoder(abc.ABC):
    """A Siamese tower as the engine sees it: tokenize a text, the hidden states at the input of block `layer`
    (`hidden`), the embedding as a function of them (`function`), and the model state during a computation
    (`prepared`). Subclasses give `num_layers`, `device`, `dtype`, `describe`, `hidden`, `function` and `prepared` (and
    `copy_as` where they can); tokenization, the pad reference and layer checks are shared here."""

    #: how the model scores a pair (sentence-transformers' similarity_fn_name): "cosine", "dot", "euclidean",
    #: "manhattan"; the path methods' sim="auto" follows it
    similarity_fn = "cosine"
    #: Matryoshka: embeddings cut to their first truncate_dim dimensions (sentence-transformers' truncate_dim)
    truncate_dim = None

    def __init__(self, tokenizer, name: str, max_length: int):
        if not callable(tokenizer):
            raise SimattrError(f"the tokenizer must be a Hugging Face tokenizer (callable), got "
                               f"{type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length

    @property
    @abc.abstractmethod
    def num_layers(self) -> int:
        ...

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        ...

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        ...

    @abc.abstractmethod
    def describe(self) -> dict:
        ...

    @abc.abstractmethod
    def hidden(self, tokens: "Tokens", layer: int, input_ids: Optional[Tensor] = None) -> Tensor:
        ...

    @abc.abstractmethod
    def function(self, tokens: "Tokens", layer: int, normalize: bool, own_norm: bool = True) -> Callable:
        ...

    @abc.abstractmethod
    def prepared(self):
        ...

    def copy_as(self, dtype: torch.dtype):
        """A copy whose model runs in `dtype` (None: this encoder cannot make one)."""
        return None

    def _forward_args(self):
        return {}

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, text, truncate: bool = False, max_length: Optional[int] = None) -> Tokens:
        if not isinstance(text, str):
            raise SimattrError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise SimattrError("text is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SimattrError(f"text {_clip(text)} is not valid Unicode (an unpaired surrogate "
                               f"{text[exc.start]!r} at position {exc.start}: a string decoded from bytes that are "
                               f"not UTF-8?)") from None
        limit = min(max_length or self.max_length, self.max_length)
        enc = self.tokenizer(text, return_tensors="pt", truncation=False, verbose=False)
        ids = enc["input_ids"]
        truncated = False
        if ids.shape[1] > limit:
            if not truncate:
                raise SimattrError(f"text has {ids.shape[1]} tokens, over the model's maximum of {limit}; "
                                   f"shorten it or pass truncate=True (--truncate) to cut it")
            warn(f"text truncated from {ids.shape[1]} to {limit} tokens")
            enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=limit)
            ids = enc["input_ids"]
            truncated = True
        word_ids = enc.word_ids(0) if hasattr(enc, "word_ids") and getattr(enc, "encodings", None) else None
        id_list = ids[0].tolist()
        unk = getattr(self.tokenizer, "unk_token_id", None)
        special_ids = set(self.tokenizer.all_special_ids) - {unk}  # [UNK] stands for text: it is explained
        special = [i in special_ids for i in id_list]
        if all(special):
            raise SimattrError(f"text {_clip(text)} has no token to explain: the tokenizer makes only "
                               f"{' '.join(self.tokenizer.convert_ids_to_tokens(id_list))} of it (control or "
                               f"zero-width characters?)")
        if unk is not None and unk in id_list:
            words = _unknown_words(text, enc, id_list, unk)
            warn(f"text {_clip(text)}: {id_list.count(unk)} token(s) unknown to the tokenizer "
                 f"({', '.join(map(repr, words)) or 'some characters'} -> {self.tokenizer.unk_token}); "
                 f"their attributions are those of {self.tokenizer.unk_token}'s embedding")
        if word_ids is None:
            word_ids = [None if s else k for k, s in enumerate(special)]
        else:
            word_ids = [None if s else w for w, s in zip(word_ids, special)]
        extra = {}
        if "token_type_ids" in enc and "token_type_ids" in self._forward_args():
            extra["token_type_ids"] = enc["token_type_ids"].to(self.device)
        return Tokens(text=text, input_ids=ids.to(self.device), attention_mask=enc["attention_mask"].to(self.device),
                      extra=extra, tokens=self.tokenizer.convert_ids_to_tokens(id_list), special=special,
                      word_ids=list(word_ids), truncated=truncated)

    def pad_ids(self, tokens: Tokens) -> Tensor:
        """Same sequence with every non-special token replaced by the pad token."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise SimattrError("the tokenizer has no pad token; pass another reference (reference='zero' or a text)")
        special = torch.tensor(tokens.special, device=tokens.input_ids.device)
        return torch.where(special, tokens.input_ids[0], torch.full_like(tokens.input_ids[0], pad)).unsqueeze(0)

    def check_layer(self, layer):
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.num_layers:
            raise SimattrError(f"layer must be an integer in [0, {self.num_layers - 1}] for this "
                               f"{self.num_layers}-block model, got {layer!r}")



@contextlib.contextmanager
def prepared(*encoders):
    """`Encoder.prepared()` for each distinct encoder (one tower shared by both texts is prepared once)."""
    with contextlib.ExitStack() as stack:
        seen = []
        for enc in encoders:
            if not any(enc is e for e in seen):
                seen.append(enc)
                stack.enter_context(enc.prepared())
        yield




def truncated(emb, k: int):
    """The first k dimensions of embeddings [N, D] (SimattrError if k > D)."""
    if k > emb.shape[-1]:
        raise SimattrError(f"truncate_dim={k} is larger than the model's {emb.shape[-1]}-dimensional embedding")
    return emb[..., :k]


def _clip(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _unknown_words(text: str, enc, id_list: list, unk: int) -> list:
    """The pieces of `text` that became the unknown token (by the tokenizer's offsets, when it gives them)."""
    try:
        spans = [enc.token_to_chars(0, k) for k, i in enumerate(id_list) if i == unk]
        return [text[sp.start:sp.end] for sp in spans if sp is not None]
    except Exception:  # noqa: BLE001  (slow tokenizers have no offsets)
        return []
