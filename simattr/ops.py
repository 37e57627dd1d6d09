"""Backend dispatch: which compiled paths (Triton, C++/CUDA extension) are usable here, and why not.

`maxsim(Q, C, Qmask, Cmask, backend="auto")` is the batched masked MaxSim (max and argmax per query token) used by
the set-based methods: "triton" (kernels/maxsim.py, CUDA tensors), "cpp" (simattr._C, CPU float32) or "torch"
(reference: one bmm, chunked over the batch). "auto" picks a kernel only where it was measured faster than the
PyTorch path (benchmarks/RESULTS.md): see `AUTO_KERNEL`.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Tuple

#: device type -> whether "auto" uses the compiled kernel there (set from benchmarks/bench_maxsim.py figures)
#: CUDA: False, measured: on an H100 the Triton kernel (fp32 IEEE dots, for exact argmax agreement) took 4.3 ms where
#: PyTorch's bmm + max took 1.8 ms (0.43x, 10,000 pairs of 32 x 128 tokens, full and ragged); benchmarks/RESULTS.md
AUTO_KERNEL = {"cuda": False, "cpu": True}
#: on CPU, "auto" takes the C++ kernel only when at most this share of the padded B x Sq x Sd score grid is unmasked:
#: it skips masked tokens (2.4x faster than PyTorch on ragged lengths) but its micro-kernel is slower than MKL's
#: bmm on full, unpadded batches (0.8x); see benchmarks/RESULTS.md
AUTO_CPP_MAX_DENSITY = 0.6
MAXSIM_BACKENDS = ("auto", "torch", "cpp", "triton")


def _triton():
    try:
        import triton  # noqa: F401
    except ImportError:
        return {"available": False, "reason": "triton is not installed (pip install 'simattr[triton]')"}
    import torch
    if torch.cuda.is_available():
        return {"available": True, "reason": f"triton {triton.__version__} on CUDA", "version": triton.__version__}
    if os.environ.get("TRITON_INTERPRET") == "1":
        return {"available": True, "reason": "interpreter (TRITON_INTERPRET=1), for tests only",
                "version": triton.__version__}
    return {"available": False, "reason": f"triton {triton.__version__} installed but no CUDA device",
            "version": triton.__version__}


def _extension():
    if os.environ.get("SIMATTR_NO_EXT") == "1":
        return {"available": False, "reason": "disabled by SIMATTR_NO_EXT=1"}
    try:
        mod = importlib.import_module("simattr._C")
    except ImportError as exc:
        return {"available": False, "reason": f"not built ({exc})"}
    return {"available": True, "reason": "built", "cuda": bool(getattr(mod, "with_cuda", lambda: False)())}


def _maxsim_info() -> dict:
    """Which MaxSim backend "auto" uses on each device, and why the others are not used."""
    import torch
    ext, tri = _extension(), _triton()
    cpp_ok = ext["available"] and _has_cpp_maxsim()
    out = {"torch": {"available": True, "reason": "PyTorch bmm + max (reference, always available)"},
           "cpp": {"available": cpp_ok,
                   "reason": "simattr._C built (OpenMP, CPU float32)" if cpp_ok else
                   (ext["reason"] if not ext["available"] else "simattr._C lacks the maxsim operator")},
           "triton": {"available": tri["available"] and torch.cuda.is_available(),
                      "reason": tri["reason"] if not torch.cuda.is_available() or not tri["available"]
                      else "Triton kernel on CUDA"}}
    out["auto_cpu"] = (f"cpp when at most {AUTO_CPP_MAX_DENSITY:.0%} of the padded score grid is unmasked, else torch"
                       if cpp_ok and AUTO_KERNEL["cpu"] else "torch")
    out["auto_cuda"] = ("triton" if out["triton"]["available"] and AUTO_KERNEL["cuda"] else "torch") \
        if torch.cuda.is_available() else "torch (no CUDA device)"
    return out


def backend_info() -> dict:
    import torch
    import transformers

    from . import __version__
    return {
        "simattr": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": {"available": torch.cuda.is_available(),
                 "reason": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"},
        "triton": _triton(),
        "extension": _extension(),
        "maxsim": _maxsim_info(),
        "attention": _attention_info(),
        "contraction": _contraction_info(),
        "zero_tensor_kernels": _zero_tensor_info(),
        "threads": torch.get_num_threads(),
    }


def _attention_info() -> dict:
    """Which attention the IJ engine uses with attention="auto"."""
    import torch
    try:
        from simattr.kernels.attention_jvp import HAS_TRITON
    except ImportError as exc:  # pragma: no cover - kernels/ ships with the package
        return {"available": False, "reason": f"simattr.kernels.attention_jvp not importable ({exc}); eager math attention"}
    if torch.cuda.is_available() and HAS_TRITON:
        return {"available": True, "reason": "fused Triton attention with a one-launch JVP (kernels/attention_jvp.py)"}
    why = "no CUDA device" if not torch.cuda.is_available() else "triton not installed"
    return {"available": False, "reason": f"{why}: eager math attention (forward-mode AD through PyTorch ops)"}


def _zero_tensor_info() -> dict:
    from . import zero_tensors
    return zero_tensors.info()


def _contraction_info() -> dict:
    from . import contraction
    return contraction.info()


# ---------------------------------------------------------------------- MaxSim dispatch
@functools.lru_cache(maxsize=None)
def _extension_loads() -> bool:
    try:
        importlib.import_module("simattr._C")
        return True
    except ImportError:
        return False


def has_operator(name: str) -> bool:
    """Whether the extension simattr._C is loadable (and not disabled) and registers torch.ops.simattr.<name>.
    (The import is tried once per process: the engine asks for every chunk.)"""
    if os.environ.get("SIMATTR_NO_EXT") == "1" or not _extension_loads():
        return False
    import torch
    try:
        return hasattr(torch.ops.simattr, name)
    except (RuntimeError, AttributeError):
        return False


def _has_cpp_maxsim() -> bool:
    return has_operator("maxsim")


def _triton_usable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(device_type: str) -> bool:
    """Whether a Triton kernel can run on tensors of `device_type`: installed, and CUDA (or the interpreter)."""
    return _triton_usable() and (device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def maxsim_torch(Q, C, Qmask=None, Cmask=None, chunk: int = 1 << 24):
    """PyTorch path: masked bmm + max over documents, chunked so no chunk's score tensor exceeds `chunk` elements.
    Same contract as the kernels (lowest index on ties; 0 and -1 for masked / document-less query tokens)."""
    import torch
    Q, C, Qmask, Cmask, B = _prepare(Q, C, Qmask, Cmask)
    Sq, Sd = Q.shape[1], C.shape[1]
    values = torch.zeros(B, Sq, dtype=torch.float32, device=Q.device)
    index = torch.full((B, Sq), -1, dtype=torch.long, device=Q.device)
    if B == 0 or Sq == 0 or Sd == 0:
        return values, index
    step = max(1, chunk // max(1, Sq * Sd))
    for s in range(0, B, step):
        e = min(B, s + step)
        q = Q if Q.shape[0] == 1 else Q[s:e]
        c = C if C.shape[0] == 1 else C[s:e]
        cm = Cmask if Cmask.shape[0] == 1 else Cmask[s:e]
        qm = Qmask if Qmask.shape[0] == 1 else Qmask[s:e]
        S = torch.matmul(q, c.transpose(1, 2)).float()
        S = S.masked_fill(~cm[:, None, :], float("-inf"))
        v, i = S.max(dim=-1)
        ok = qm & cm.any(-1, keepdim=True)
        values[s:e] = torch.where(ok, v, torch.zeros((), device=v.device))
        index[s:e] = torch.where(ok, i, torch.full((), -1, device=i.device))
    return values, index


def _prepare(Q, C, Qmask, Cmask):
    import torch
    from .errors import SimattrError
    if Q.dim() == 2:
        Q = Q.unsqueeze(0)
    if C.dim() == 2:
        C = C.unsqueeze(0)
    if Q.dim() != 3 or C.dim() != 3 or Q.shape[-1] != C.shape[-1]:
        raise SimattrError(f"maxsim needs Q [B, S_q, D] and C [B, S_d, D] of one width, got {tuple(Q.shape)} and "
                           f"{tuple(C.shape)}")
    if Q.shape[0] != C.shape[0] and 1 not in (Q.shape[0], C.shape[0]):
        raise SimattrError(f"maxsim batch sizes {Q.shape[0]} and {C.shape[0]} differ and neither is 1")
    if Q.device != C.device:
        raise SimattrError(f"Q and C are on different devices ({Q.device}, {C.device})")
    B = max(Q.shape[0], C.shape[0])
    if C.dtype != Q.dtype:
        C = C.to(Q.dtype)
    Qmask = torch.ones(Q.shape[:2], dtype=torch.bool, device=Q.device) if Qmask is None else Qmask.to(Q.device).bool()
    Cmask = torch.ones(C.shape[:2], dtype=torch.bool, device=C.device) if Cmask is None else Cmask.to(C.device).bool()
    if Qmask.dim() == 1:
        Qmask = Qmask.unsqueeze(0)
    if Cmask.dim() == 1:
        Cmask = Cmask.unsqueeze(0)
    if Qmask.shape[-1] != Q.shape[1] or Cmask.shape[-1] != C.shape[1]:
        raise SimattrError("maxsim masks must be [B, S] with the token counts of Q and C")
    return Q, C, Qmask, Cmask, B


def mask_density(Q, C, Qmask=None, Cmask=None) -> float:
    """Share of the padded B x Sq x Sd grid whose query and document tokens are both unmasked."""
    Q, C, Qmask, Cmask, B = _prepare(Q, C, Qmask, Cmask)
    total = B * Q.shape[1] * C.shape[1]
    if total == 0:
        return 1.0
    nq = Qmask.sum(-1).expand(B).double()
    nd = Cmask.sum(-1).expand(B).double()
    return float((nq * nd).sum()) / total


def choose_maxsim_backend(device_type: str, dtype, backend: str = "auto", density: float = 1.0) -> str:
    """The backend `maxsim` runs for tensors on `device_type` of `dtype` whose masks keep `density` of the score
    grid (raises if a named backend cannot run)."""
    import torch
    from .errors import SimattrError
    if backend not in MAXSIM_BACKENDS:
        raise SimattrError(f"unknown maxsim backend {backend!r}; choose one of {', '.join(MAXSIM_BACKENDS)}")
    if backend == "torch":
        return "torch"
    if backend == "cpp":
        if device_type != "cpu":
            raise SimattrError("the C++ maxsim kernel runs on CPU tensors only")
        if not _has_cpp_maxsim():
            raise SimattrError(f"the C++ extension is not available ({_extension()['reason']})")
        return "cpp"
    if backend == "triton":
        if not _triton_usable():
            raise SimattrError("triton is not installed (pip install 'simattr[triton]')")
        if not triton_runs_on(device_type):
            raise SimattrError("the Triton maxsim kernel needs CUDA tensors (or TRITON_INTERPRET=1 for tests)")
        return "triton"
    if device_type == "cuda" and AUTO_KERNEL["cuda"] and _triton_usable():
        return "triton"
    if (device_type == "cpu" and AUTO_KERNEL["cpu"] and dtype == torch.float32 and density <= AUTO_CPP_MAX_DENSITY
            and _has_cpp_maxsim()):
        return "cpp"
    return "torch"


def maxsim(Q, C, Qmask=None, Cmask=None, backend: str = "auto") -> Tuple:
    """Batched masked MaxSim: values [B, S_q] (float32) and index [B, S_q] (int64, lowest index on ties) of
    max_j <Q[b, i], C[b, j]> over unmasked j; masked or document-less query tokens get 0 and -1.
    Q [B|1, S_q, D], C [B|1, S_d, D]; a batch of 1 is broadcast (one query against many documents)."""
    import torch
    Q, C, Qmask, Cmask, B = _prepare(Q, C, Qmask, Cmask)
    density = mask_density(Q, C, Qmask, Cmask) if backend == "auto" and Q.device.type == "cpu" else 1.0
    which = choose_maxsim_backend(Q.device.type, Q.dtype, backend, density)
    if which == "torch":
        return maxsim_torch(Q, C, Qmask, Cmask)
    if which == "cpp":
        importlib.import_module("simattr._C")
        return torch.ops.simattr.maxsim(Q.float(), C.float(), Qmask, Cmask)
    from simattr.kernels.maxsim import maxsim_triton
    return maxsim_triton(Q, C, Qmask, Cmask)
