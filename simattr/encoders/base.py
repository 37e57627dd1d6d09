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
    prompt_length: int = 0  # positions [0, prompt_length): sentence-transformers' count (its pooling mask)
    prompt_shown: bool = False  # the prompt's tokens are explained like the text's (include_prompt=True)
    prompt_text: str = ""  # the prompt put before the text (empty: none)
    prompt_dropped: int = 0  # prompt tokens taken out of this view (`without_held`)
    prompt_flags: Optional[list] = None  # per token: one of the prompt's (by character offsets where the
    # tokenizer gives them: a byte-level BPE's "Ġhow" after "query: " is the text's); None: positions < prompt_length
    scoring: Optional[list] = None  # a multi-vector model's scored positions (None: not one)
    expansion: Optional[Tensor] = None  # [1, S] bool: a query's expansion (mask) tokens, added by the model

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def prompt(self) -> list:
        """Per token: whether it is one of the prompt's tokens (special tokens are not)."""
        if self.prompt_flags is not None:
            return [f and not s for f, s in zip(self.prompt_flags, self.special)]
        return [k < self.prompt_length and not s for k, s in enumerate(self.special)]

    @property
    def held(self) -> list:
        """Per token: whether it is context held fixed and left out of the result (the prompt, unless shown)."""
        return [False] * self.length if self.prompt_shown else self.prompt

    def without_held(self) -> "Tokens":
        """These tokens without the ones held as context (the set-based methods' view: the prompt is not matched)."""
        held = self.held
        if not any(held):
            return self
        return self.select([k for k, h in enumerate(held) if not h], prompt_dropped=sum(held))

    def select(self, keep: list, prompt_dropped: int = 0) -> "Tokens":
        """The tokens at positions `keep` (in order) as a Tokens of their own; prompt tokens among them are shown
        (and marked), the others counted in prompt_dropped."""
        idx = torch.tensor(keep, device=self.input_ids.device, dtype=torch.long)
        pick = lambda t: t[:, idx]
        flags = self.prompt
        return Tokens(text=self.text, input_ids=pick(self.input_ids), attention_mask=pick(self.attention_mask),
                      extra={k: pick(v) for k, v in self.extra.items()}, tokens=[self.tokens[k] for k in keep],
                      special=[self.special[k] for k in keep], word_ids=[self.word_ids[k] for k in keep],
                      truncated=self.truncated, prompt_length=0, prompt_shown=any(flags[k] for k in keep),
                      prompt_text=self.prompt_text, prompt_dropped=prompt_dropped,
                      prompt_flags=[flags[k] for k in keep])


def pool(hidden: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Pool token states [N, S, H] with mask [N, S] into [N, H]."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if mode == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
    if mode == "mean_sqrt_len_tokens":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9).sqrt()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":  # the first position the mask keeps (0 unless a prompt is left out), as sentence-transformers
        return hidden[rows, mask.to(torch.int).argmax(1)]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if mode == "lasttoken":  # the last position the mask keeps
        values, flipped = mask.to(torch.int).flip(1).max(1)
        last = torch.where(values == 0, hidden.shape[1] - 1, hidden.shape[1] - 1 - flipped)
        return hidden[rows, last]
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
    #: text put before every text this tower encodes (sentence-transformers' prompt, e.g. "query: "); None: none
    prompt = None
    #: the prompt's tokens are explained like the text's (True) or held as fixed context and left out (False)
    include_prompt = False
    #: the model's pooling counts the prompt's tokens (sentence-transformers' Pooling include_prompt)
    pool_include_prompt = True

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

    def pack_key(self, tokens: "Tokens"):
        """What texts must share to run as rows of one padded batch (`packed_function`); None (the default): this
        tower runs each text alone."""
        return None

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
        limit = self._token_limit(max_length)
        prompt = self.prompt or ""
        plen = self.prompt_length(prompt)
        full = prompt + text
        enc = self.tokenizer(full, return_tensors="pt", truncation=False, verbose=False)
        ids = enc["input_ids"]
        truncated = False
        if ids.shape[1] > limit:
            with_prompt = f" (with the prompt's {plen})" if prompt else ""
            if not truncate:
                raise SimattrError(f"text has {ids.shape[1]} tokens{with_prompt}, over the model's maximum of "
                                   f"{limit}; shorten it or pass truncate=True (--truncate) to cut it")
            if plen >= limit - 1:
                raise SimattrError(f"the prompt {_clip(prompt)} alone takes {plen} of the model's {limit} tokens")
            warn(f"text truncated from {ids.shape[1]} to {limit} tokens{with_prompt}")
            enc = self.tokenizer(full, return_tensors="pt", truncation=True, max_length=limit)
            ids = enc["input_ids"]
            truncated = True
        word_ids = enc.word_ids(0) if hasattr(enc, "word_ids") and getattr(enc, "encodings", None) else None
        id_list = ids[0].tolist()
        unk = getattr(self.tokenizer, "unk_token_id", None)
        special_ids = set(self.tokenizer.all_special_ids) - {unk}  # [UNK] stands for text: it is explained
        special = [i in special_ids for i in id_list]
        if all(s or k < plen for k, s in enumerate(special)):
            if prompt and not all(special):
                raise SimattrError(f"text {_clip(text)} has no token of its own after the prompt {_clip(prompt)}")
            raise SimattrError(f"text {_clip(text)} has no token to explain: the tokenizer makes only "
                               f"{' '.join(self.tokenizer.convert_ids_to_tokens(id_list))} of it (control or "
                               f"zero-width characters?)")
        if unk is not None and unk in id_list:
            words = _unknown_words(full, enc, id_list, unk)
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
                      word_ids=list(word_ids), truncated=truncated, prompt_length=plen,
                      prompt_shown=bool(self.include_prompt), prompt_text=prompt,
                      prompt_flags=prompt_flags(enc, len(id_list), prompt, plen))

    def _token_limit(self, max_length: Optional[int]) -> int:
        """The most tokens a text may have (prompt included)."""
        return min(max_length or self.max_length, self.max_length)

    def prompt_length(self, prompt: str) -> int:
        """Tokens of `prompt` at the start of prompt + text, as sentence-transformers counts them: the prompt
        tokenized alone, less a final special token ([SEP], </s>)."""
        if not prompt:
            return 0
        cache = self.__dict__.setdefault("_prompt_lengths", {})
        if prompt not in cache:
            ids = self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
            n = len(ids)
            if ids and ids[-1] in set(self.tokenizer.all_special_ids):
                n -= 1
            cache[prompt] = n
        return cache[prompt]

    def pad_ids(self, tokens: Tokens) -> Tensor:
        """Same sequence with every token of the text replaced by the pad token (special tokens, and a prompt held
        as context, stay)."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise SimattrError("the tokenizer has no pad token; pass another reference (reference='zero' or a text)")
        special = torch.tensor([s or h for s, h in zip(tokens.special, tokens.held)], device=tokens.input_ids.device)
        return torch.where(special, tokens.input_ids[0], torch.full_like(tokens.input_ids[0], pad)).unsqueeze(0)

    def check_layer(self, layer):
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.num_layers:
            raise SimattrError(f"layer must be an integer in [0, {self.num_layers - 1}] for this "
                               f"{self.num_layers}-block model, got {layer!r}")



def prompt_flags(enc, n: int, prompt: str, count: int) -> Optional[list]:
    """Per token of prompt + text: whether it lies in the prompt, by the tokenizer's character offsets (a token
    ending inside the prompt); without offsets (a slow tokenizer), sentence-transformers' count `count`."""
    if not prompt:
        return None
    end = len(prompt.rstrip()) if prompt.strip() else len(prompt)
    try:
        spans = [enc.token_to_chars(0, k) for k in range(n)]
    except Exception:  # noqa: BLE001  (slow tokenizers have no offsets)
        return [k < count for k in range(n)]
    return [sp is not None and sp.start < end for sp in spans]


def prompt_extras(tokens_a: Tokens, tokens_b: Tokens, groups_a=None, groups_b=None) -> dict:
    """{"prompt": {"a": ..., "b": ...}} for an Explanation's extras when a side has a prompt ({} otherwise): its
    text, its token count, whether it is shown, and if so which units (rows / columns) are the prompt's."""
    def one(t: Tokens, groups):
        if not t.prompt_text:
            return None
        flags = t.prompt
        info = {"text": t.prompt_text, "tokens": t.prompt_dropped or sum(flags), "shown": t.prompt_shown}
        if t.prompt_shown:
            groups = groups if groups is not None else [[k] for k in range(t.length)]
            info["units"] = [u for u, g in enumerate(groups) if any(flags[s] for s in g)]
        return info
    a, b = one(tokens_a, groups_a), one(tokens_b, groups_b)
    return {"prompt": {"a": a, "b": b}} if a or b else {}


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




def l2(x: Tensor) -> Tensor:
    """Rows of x over their L2 norms (the cosine's normalisation; zero rows stay zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


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
