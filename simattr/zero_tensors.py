"""Fast ZeroTensor kernels for forward-mode AD, enabled around every attribution job.

In `torch.func.jvp` an operand without a tangent (a weight, a bias, a mask, a Python scalar) contributes an
"efficient zero tensor", and PyTorch's ZeroTensor kernels of add, sub and mul work out the result's shape by running
the op on meta tensors — whose kernels for these ops are Python functions. That costs ~0.2 ms of interpreter time per
op whatever the tensor size (measured: `x * 2.0` under jvp 0.9 ms instead of 0.35 ms), ~15 ops per transformer layer:
a fixed cost per forward-mode pass that dominates short texts, above all on a GPU. `csrc/cpu/zero_tensor.cpp`
registers C++ kernels with the same results (shape by broadcasting, dtype by type promotion) while a job computes,
and PyTorch's own kernels are back when it ends (`fast_kernels()`, nestable) — and while a stream of explanations
(`iter_many`) waits at a yield (`paused`). The registration is process-wide while it lasts: other threads then get
the same results through the fast kernels. Without the compiled extension, or with
SIMATTR_ZERO_TENSOR_KERNELS=0 (or `ENABLED = False`), nothing changes: PyTorch's kernels run, same results.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import backends

#: whether jobs use the fast kernels when the extension provides them
ENABLED = os.environ.get("SIMATTR_ZERO_TENSOR_KERNELS", "1") != "0"


def available() -> bool:
    """Whether simattr._C is built (and not disabled) with the zero_tensor_kernels operator."""
    return backends.has_operator("zero_tensor_kernels")


@contextlib.contextmanager
def fast_kernels(enabled=None):
    """Register the C++ ZeroTensor kernels of add/sub/mul inside the block (nestable; restored on exit, also after an
    exception). enabled: None follows `ENABLED`. Yields whether they are active."""
    use = ENABLED if enabled is None else bool(enabled)
    if not use or not available():
        yield False
        return
    torch.ops.simattr.zero_tensor_kernels(True)
    try:
        yield True
    finally:
        torch.ops.simattr.zero_tensor_kernels(False)


@contextlib.contextmanager
def paused(active: bool):
    """Inside `fast_kernels()` (active: what it yielded): PyTorch's kernels for the block, e.g. while a generator is
    suspended at a yield and the caller's code runs; the fast ones again after it."""
    if not active:
        yield
        return
    torch.ops.simattr.zero_tensor_kernels(False)
    try:
        yield
    finally:
        torch.ops.simattr.zero_tensor_kernels(True)


def info() -> dict:
    """For `simattr info`: whether jobs run with the fast kernels, and why not."""
    if not available():
        ext = backends.extension()
        reason = ext.reason if not ext.available else "simattr._C lacks zero_tensor_kernels (rebuild it)"
        return {"available": False, "reason": reason}
    if not ENABLED:
        return {"available": True, "active": False, "reason": "SIMATTR_ZERO_TENSOR_KERNELS=0"}
    return {"available": True, "active": True,
            "reason": "simattr._C: C++ ZeroTensor kernels of add/sub/mul during attribution jobs"}


__all__ = ["fast_kernels", "paused", "available", "info", "ENABLED"]
