"""What `simattr info` reports: versions, devices, the extension and Triton loaders, each operator's backends (from
the registry, simattr/backends.py, the fused attention's among them) and the ZeroTensor kernels."""
from __future__ import annotations

import torch
import transformers

from . import backends, zero_tensors
from .version import __version__


def info() -> dict:
    """Everything `simattr info` reports: versions, devices, the extension and Triton loaders, and per operator
    which backend runs where and why the others do not."""
    ext, tri = backends.extension(), backends.triton()
    return {
        "simattr": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": {"available": torch.cuda.is_available(),
                 "reason": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"},
        "triton": {"available": tri.available, "state": tri.state, "reason": tri.reason},
        "extension": {"available": ext.available, "state": ext.state, "reason": ext.reason,
                      "cuda": backends.extension_with_cuda()},
        **{operator: backends.report(operator) for operator in backends.REGISTRY},
        "zero_tensor_kernels": zero_tensors.info(),
        "threads": torch.get_num_threads(),
    }
