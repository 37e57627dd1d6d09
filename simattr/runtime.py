"""Process-wide state a computation changes, entered and left here — nothing outlives the computation.

- `attention_implementation(name, forward, mask)`: an entry in transformers' attention registry (the fused
  attention of simattr/attention.py, the BiLRP attention rules of simattr/rules.py) while the context is open;
  removed when the last user leaves (nested and concurrent uses of one name share it).
- `computation(job)`: one path-method job (simattr/jobs.py `run`): the job's own context (prepared encoders —
  eval mode, frozen parameters, attention implementation — and fused attention) and the C++ ZeroTensor kernels
  (simattr/zero_tensors.py), which `paused` hands back to PyTorch while the caller's code runs between pairs.
"""
from __future__ import annotations

import contextlib
import threading

from . import zero_tensors

_lock = threading.Lock()
_users = {}  # registry name -> how many open contexts use it


def _registries():
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
    return AttentionInterface, AttentionMaskInterface


def registered(name: str) -> bool:
    """Whether transformers' attention registry holds `name` now."""
    attention, _ = _registries()
    return name in attention._global_mapping


@contextlib.contextmanager
def attention_implementation(name: str, forward, mask):
    """transformers' attention registry maps `name` to `forward` (and its mask registry to `mask`) inside."""
    attention, masks = _registries()
    with _lock:
        first = _users.get(name, 0) == 0
        if first:
            attention.register(name, forward)
            masks.register(name, mask)
        _users[name] = _users.get(name, 0) + 1
    try:
        yield name
    finally:
        with _lock:
            _users[name] -= 1
            if _users[name] == 0:
                del _users[name]
                # transformers has no public way to unregister: its class-level mapping is where register() wrote
                attention._global_mapping.pop(name, None)
                masks._global_mapping.pop(name, None)


@contextlib.contextmanager
def computation(job):
    """Everything process-wide that one job changes, entered together and left together; yields the ZeroTensor
    switch for `paused`."""
    with job.context(), zero_tensors.fast_kernels() as zt:
        yield zt


def paused(zt):
    """PyTorch's own kernels while the caller's code runs (between the pairs a job yields)."""
    return zero_tensors.paused(zt)
