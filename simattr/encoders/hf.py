"""The Hugging Face / sentence-transformers tower: `Encoder` runs a transformers model (plus a sentence-transformers
head), exposing f from the input of block `layer` to the embedding.

`f` is architecture-agnostic: the hidden states at the input of block `layer` are substituted by a hook
(a forward hook on the embedding module for layer 0, a forward pre-hook on block `layer` otherwise), so
any Hugging Face encoder with an `embeddings` module and a list of blocks works without a per-family copy.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import SimattrError
from .base import POOLINGS, BaseEncoder, Tokens, l2, pool, truncated

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


#: sentence-transformers head modules that treat each row (and, for Pooling, each position under the mask) alone:
#: texts of a head made only of these can run as rows of one padded batch (`Encoder.pack_key`)
ROW_WISE_HEAD_MODULES = ("Pooling", "Dense", "Normalize", "LayerNorm", "Dropout", "Identity")


class Encoder(BaseEncoder):
    """A Siamese tower: tokenizer + transformer + pooling (+ optional head modules).

    `function(tokens, layer, normalize)` returns f: [N, S, H] -> [N, D], the embedding as a function of the
    hidden states at the input of block `layer` (layer 0 = output of the embedding module).
    """

    def __init__(self, model: nn.Module, tokenizer, pooling: str = "mean", head: Optional[Callable] = None,
                 normalized: bool = False, max_length: Optional[int] = None, name: str = "model"):
        if pooling not in POOLINGS:
            raise SimattrError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        limit = getattr(model.config, "max_position_embeddings", None) or 512
        if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # positions start after padding_idx
        super().__init__(tokenizer, name, min(int(max_length), limit) if max_length else limit)
        self.model = model
        self.pooling = pooling
        self.head = head  # callable(features dict) -> features dict, applied after pooling (e.g. ST Dense)
        self.normalized = normalized  # the model itself ends with L2 normalisation
        self.embeddings = find_embeddings(model)
        self.blocks = find_blocks(model)

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
        out = {"name": self.name, "architecture": type(self.model).__name__, "pooling": self.pooling,
               "layers": self.num_layers, "max_length": self.max_length, "normalized": self.normalized}
        if self.prompt:
            out["prompt"] = self.prompt
        if getattr(self, "route", None):
            out["route"] = self.route
        return out

    def _forward_args(self):
        import inspect
        return inspect.signature(self.model.forward).parameters

    # ------------------------------------------------------------------ the function f
    def _run(self, input_ids: Tensor, tokens: Tokens) -> Tensor:
        n = input_ids.shape[0]
        extra = {k: v.expand(n, -1) for k, v in tokens.extra.items()}
        out = self.model(input_ids=input_ids, attention_mask=tokens.attention_mask.expand(n, -1), **extra)
        hidden = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
        return hidden

    def _head(self, hidden: Tensor, mask: Tensor, tokens: Tokens) -> Tensor:
        if self.head is not None:  # sentence-transformers modules: they read the prompt length themselves
            feats = {"token_embeddings": hidden, "attention_mask": mask,
                     "input_ids": tokens.input_ids.expand(hidden.shape[0], -1)}
            if tokens.prompt_length:
                feats["prompt_length"] = tokens.prompt_length
            return self.head(feats)["sentence_embedding"]
        if tokens.prompt_length and not self.pool_include_prompt:  # as Pooling(include_prompt=False) does
            mask = mask.clone()
            mask[:, : tokens.prompt_length] = 0
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

    def function(self, tokens: Tokens, layer: int, normalize: bool, own_norm: bool = True) -> Callable[[Tensor], Tensor]:
        """f: x [N, S, H] at the input of block `layer` -> embedding [N, D] (L2-normalised if `normalize`, or if the
        model ends with its own Normalize module and `own_norm`; a caller that treats the norm itself, like
        BiLRP's rules, passes own_norm=False)."""
        run = self._substituted(layer)

        def f(x: Tensor) -> Tensor:
            return self._output(run(x, tokens), tokens, normalize, own_norm)

        return f

    def pack_key(self, tokens: Tokens):
        """What texts must share to run as rows of one padded batch (`packed_function`): this encoder, the prompt
        length its pooling reads and the model inputs it takes; None for a text that cannot be packed — and for
        every text of a head with a module that may mix positions without the mask (a CNN, an LSTM, anything
        not in ROW_WISE_HEAD_MODULES: padded positions would reach the real ones)."""
        if tokens.expansion is not None or tokens.scoring is not None:
            return None
        if self.head is not None and not (isinstance(self.head, nn.Sequential) and all(
                type(m).__name__ in ROW_WISE_HEAD_MODULES for m in self.head)):
            return None
        return (id(self), tokens.prompt_length, tuple(sorted(tokens.extra)))

    def packed_function(self, tokens_list: list, layer: int, normalize: bool,
                        own_norm: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
        """F(x, rows): f of several texts in one batch. x [N, S, H] with S the longest text's length; row n is text
        rows[n], right-padded (its padded positions masked out of attention and pooling, so they change nothing).
        The texts must share `pack_key`."""
        packed = self.packed_tokens(tokens_list)
        run = self._substituted(layer)

        def F(x: Tensor, rows: Tensor) -> Tensor:
            tokens = dataclasses.replace(packed, input_ids=packed.input_ids[rows],
                                         attention_mask=packed.attention_mask[rows],
                                         extra={k: v[rows] for k, v in packed.extra.items()})
            return self._output(run(x, tokens), tokens, normalize, own_norm)

        return F

    def packed_tokens(self, tokens_list: list) -> Tokens:
        """The texts as the rows of one batch: ids, mask and model inputs [R, S] right-padded to the longest (the
        pad token, mask 0); the rest as the first text's. The texts must share `pack_key`."""
        if len({self.pack_key(t) for t in tokens_list}) != 1 or self.pack_key(tokens_list[0]) is None:
            raise SimattrError("texts of different pack keys cannot run as one batch")
        S = max(t.length for t in tokens_list)
        pad = self.tokenizer.pad_token_id if getattr(self.tokenizer, "pad_token_id", None) is not None else 0

        def stack(get, fill):
            return torch.cat([nn.functional.pad(get(t), (0, S - t.length), value=fill) for t in tokens_list])

        return dataclasses.replace(tokens_list[0], input_ids=stack(lambda t: t.input_ids, pad),
                                   attention_mask=stack(lambda t: t.attention_mask, 0),
                                   extra={k: stack(lambda t: t.extra[k], 0) for k in tokens_list[0].extra})

    def _substituted(self, layer: int) -> Callable[[Tensor, Tokens], Tensor]:
        """run(x, tokens): the last hidden states with the input of block `layer` replaced by x [N, S, H] (a forward
        hook on the embedding module for layer 0, a forward pre-hook on the block otherwise); tokens' ids and mask
        are [1, S] (broadcast to the N rows) or [N, S]."""
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

        def run(x: Tensor, tokens: Tokens) -> Tensor:
            slot["x"] = x
            if kind == "forward":
                handle = module.register_forward_hook(substitute)
            else:
                handle = module.register_forward_pre_hook(substitute, with_kwargs=True)
            try:
                return self._run(tokens.input_ids.expand(x.shape[0], -1), tokens)
            finally:
                handle.remove()
                slot.clear()

        return run

    def _output(self, hidden: Tensor, tokens: Tokens, normalize: bool, own_norm: bool) -> Tensor:
        """The embedding [N, D] from the last hidden states [N, S, H]: pooling or the head, the model's own
        Normalize (if own_norm), Matryoshka truncation, and the L2 normalisation of cosine (if normalize)."""
        emb = self._head(hidden, tokens.attention_mask.expand(hidden.shape[0], -1), tokens)
        if self.truncate_dim is None:
            if normalize or (own_norm and self.normalized):  # cosine, or the model's own Normalize module
                emb = l2(emb)
            return emb
        # Matryoshka, as sentence-transformers does it: the modules (Normalize included), then the first
        # truncate_dim dimensions; cosine normalises the truncated embedding
        if own_norm and self.normalized:
            emb = l2(emb)
        emb = truncated(emb, self.truncate_dim)
        if normalize:
            emb = l2(emb)
        return emb

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
        """Eval mode, frozen parameters of the model and its head (2x faster batched VJPs, 4x less memory), eager
        attention; all restored."""
        model = self.model
        training = model.training
        params = list(model.parameters()) + (list(self.head.parameters()) if isinstance(self.head, nn.Module) else [])
        grads = [(p, p.requires_grad) for p in params]
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


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the wanted hidden states exist."""


