"""Encoders (towers): the interface (`base`), the Hugging Face / sentence-transformers implementation (`hf`), a
tower from plain callables (`callable`), and loading (`loading`)."""
from .base import POOLINGS, BaseEncoder, Tokens, pool, prepared, prompt_extras
from .callable import CallableEncoder
from .hf import Encoder, find_blocks, find_embeddings
from .loading import default_model_path, load_encoder

__all__ = ["BaseEncoder", "Encoder", "CallableEncoder", "Tokens", "POOLINGS", "pool", "prepared", "prompt_extras", "find_blocks",
           "find_embeddings", "default_model_path", "load_encoder"]
