"""The backend registry: which implementation of each operator runs where, and why the others do not.

One loader for the compiled extension (`extension()`: built at install time, cached or compiled now on first use
(simattr/compile_ext.py), not built, built for another torch, or disabled — said apart), one for Triton (`triton()`), and one table `REGISTRY` of operator -> backend -> what it needs and
which devices it runs on, with the measured "auto" choice per device (`AUTO`). Dispatch (`choose`) and the
per-operator part of `simattr info` (`report`) are both read from it. Adding a backend is one `Backend` entry plus its file.

Operators: "maxsim" (batched masked MaxSim, simattr/ops.py), "contraction" (the reverse-mode Jacobian
contraction, simattr/contraction.py), "attention" (the fused attention and its JVP inside the path methods,
simattr/attention.py over simattr/kernels/attention_jvp.py). The whole report of `simattr info` is `simattr.report.info`.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from .errors import SimattrError


# ------------------------------------------------------------------------------------------ loaders
@dataclass(frozen=True)
class Status:
    available: bool
    state: str  # extension: "built", "cached", "compiled now", "not built", "built for another torch", "disabled"
    reason: str


@functools.lru_cache(maxsize=None)
def _load_extension() -> Tuple[Optional[object], Status]:
    if os.environ.get("SIMATTR_NO_EXT") == "1":
        return None, Status(False, "disabled", "disabled by SIMATTR_NO_EXT=1")
    try:
        mod = importlib.import_module("simattr._C")
    except ModuleNotFoundError as exc:  # not built at install time: compiled on first use into the user's cache
        from . import compile_ext
        mod, state, why = compile_ext.load()
        if mod is None:
            return None, Status(False, "not built", f"{why} [{exc}]; pip install --no-build-isolation -e . builds "
                                                    f"it at install time")
        cuda = bool(getattr(mod, "with_cuda", lambda: False)())
        return mod, Status(True, state, why + (" with CUDA" if cuda else ""))
    except ImportError as exc:  # the file is there but does not link: compiled against another torch
        import torch
        return None, Status(False, "built for another torch",
                            f"built for another torch than {torch.__version__} ({exc}); rebuild it: "
                            f"pip install --no-build-isolation -e .")
    cuda = bool(getattr(mod, "with_cuda", lambda: False)())
    return mod, Status(True, "built", "built" + (" with CUDA" if cuda else ""))


def extension() -> Status:
    """The compiled extension simattr._C, loaded once per process (SIMATTR_NO_EXT=1 is read then)."""
    if os.environ.get("SIMATTR_NO_EXT") == "1":
        return Status(False, "disabled", "disabled by SIMATTR_NO_EXT=1")
    return _load_extension()[1]


def extension_with_cuda() -> bool:
    mod = _load_extension()[0] if extension().available else None
    return bool(mod is not None and getattr(mod, "with_cuda", lambda: False)())


def has_operator(name: str) -> bool:
    """Whether the extension is loaded and registers torch.ops.simattr.<name>."""
    if not extension().available:
        return False
    import torch
    try:
        return hasattr(torch.ops.simattr, name)
    except (RuntimeError, AttributeError):
        return False


def triton() -> Status:
    try:
        import triton as t  # noqa: F401  (its version is reported)
    except ImportError:
        return Status(False, "not installed", "triton is not installed (pip install 'simattr[triton]')")
    import torch
    if torch.cuda.is_available():
        return Status(True, "cuda", f"triton {t.__version__} on CUDA")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return Status(True, "interpreter", "interpreter (TRITON_INTERPRET=1), for tests only")
    return Status(False, "no device", f"triton {t.__version__} installed but no CUDA device")


def triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_runs_on(device_type: str) -> bool:
    """Whether a Triton kernel can run on tensors of `device_type`: installed, and CUDA (or the interpreter)."""
    return triton_installed() and (device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


# ------------------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Backend:
    """One implementation of an operator: the devices it runs on, what it needs (a check returning
    (usable, why not)), and a line for `simattr info`."""

    name: str
    devices: tuple
    needs: Callable[[str], Tuple[bool, str]]  # device type -> (usable there, the reason if not)
    about: str
    runs_on: Optional[Callable[[str], bool]] = None  # device types it accepts (default: `devices`)

    def accepts(self, device_type: str) -> bool:
        return self.runs_on(device_type) if self.runs_on else device_type in self.devices


def _always(device_type):
    return True, ""


def _operator(op: str, what: str) -> Callable:
    def needs(device_type):
        ext = extension()
        if not ext.available:
            return False, f"the C++ extension is not available ({ext.reason})"
        if not has_operator(op):
            return False, f"simattr._C lacks the {op} operator ({what})"
        return True, ""
    return needs


def _cuda_operator(op: str) -> Callable:
    def needs(device_type):
        if not (has_operator(op) and extension_with_cuda()):
            return False, "simattr._C not built with CUDA (SIMATTR_BUILD_CUDA=1 with a CUDA torch)"
        return True, ""
    return needs


def _triton(device_type):
    if not triton_installed():
        return False, "triton is not installed (pip install 'simattr[triton]')"
    if not triton_runs_on(device_type):
        return False, "a Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for tests)"
    return True, ""


REGISTRY = {
    "maxsim": {
        "torch": Backend("torch", ("cpu", "cuda"), _always, "PyTorch bmm + max (reference, always available)"),
        "cpp": Backend("cpp", ("cpu",), _operator("maxsim", "MaxSim"), "simattr._C (OpenMP, CPU float32)"),
        "triton": Backend("triton", ("cuda",), _triton, "Triton kernel (simattr/kernels/maxsim.py)",
                          runs_on=triton_runs_on),
    },
    "contraction": {
        "torch": Backend("torch", ("cpu", "cuda"), _always, "torch.einsum + index_add (reference, always available)"),
        "cpp": Backend("cpp", ("cpu",), _operator("contract_tangent", "Jacobian contraction"),
                       "simattr._C (OpenMP, vectorised)"),
        "cuda": Backend("cuda", ("cuda",), _cuda_operator("contract_tangent"), "simattr._C CUDA kernel"),
        "triton": Backend("triton", ("cuda",), _triton, "Triton kernel (simattr/kernels/contract.py)",
                          runs_on=triton_runs_on),
    },
    "attention": {
        "torch": Backend("torch", ("cpu", "cuda"), _always,
                         "autograd.Function over PyTorch math (eager attention's values and JVP; reference)"),
        "triton": Backend("triton", ("cuda",), _triton,
                          "fused Triton kernel, one launch for all tangents of a JVP (simattr/kernels/attention_jvp.py)",
                          runs_on=triton_runs_on),
    },
}

#: the C++ MaxSim kernel skips masked tokens (2.4x faster than PyTorch on ragged lengths) but its micro-kernel is
#: slower than MKL's bmm on full batches (0.8x): "auto" takes it when at most this share of the padded
#: B x Sq x Sd grid is unmasked (benchmarks/RESULTS.md)
AUTO_CPP_MAX_DENSITY = 0.6


def _auto_maxsim_cpu(dtype=None, density: float = 1.0, **_):
    import torch
    return "cpp" if (dtype is None or dtype == torch.float32) and density <= AUTO_CPP_MAX_DENSITY else "torch"


#: operator -> device type -> the backend "auto" tries first there (a name, or a function of the call's context);
#: measured (benchmarks/RESULTS.md): MaxSim on CUDA: PyTorch (the Triton kernel in fp32 IEEE dots took 4.3 ms where
#: bmm + max took 1.8 ms on an H100); contraction on the CPU: C++ (5-10.7x the einsum, one thread); on CUDA:
#: Triton (4.0-5.8x the einsum at all six chunk shapes of bench_contract.py on an H100; the CUDA kernel 3.8-5.5x);
#: attention on CUDA: Triton (IJ end to end 1.06-1.64x eager from 24 tokens on, H100; shorter sequences run eager
#: math inside the fused context, `attention.AUTO_MIN_TOKENS`)
AUTO = {
    "maxsim": {"cpu": _auto_maxsim_cpu, "cuda": "torch"},
    "contraction": {"cpu": "cpp", "cuda": "triton"},
    "attention": {"cpu": "torch", "cuda": "triton"},
}


def names(operator: str) -> tuple:
    """"auto" and the operator's backends: the values its option accepts."""
    return ("auto",) + tuple(REGISTRY[operator])


def choose(operator: str, device_type: str, backend: str = "auto", **context) -> str:
    """The backend that runs `operator` on tensors of `device_type`: a named one (SimattrError saying why if it
    cannot run there), or under "auto" the registry's choice if it can run, else the reference "torch"."""
    table = REGISTRY[operator]
    if backend != "auto" and backend not in table:
        raise SimattrError(f"unknown {operator} backend {backend!r}; choose one of {', '.join(names(operator))}")
    if backend != "auto":
        b = table[backend]
        ok, why = b.needs(device_type)
        problems = ([] if b.accepts(device_type) else
                    [f"it runs on {' or '.join(d.upper() for d in b.devices)} tensors only"]) + ([] if ok else [why])
        if problems:
            raise SimattrError(f"the {backend} {operator} kernel cannot run on {device_type} tensors here: "
                               f"{'; '.join(problems)}")
        return backend
    pick = AUTO[operator].get(device_type, "torch")
    if callable(pick):
        pick = pick(**context)
    b = table.get(pick)
    if b is not None and b.accepts(device_type) and b.needs(device_type)[0]:
        return pick
    return "torch"


def report(operator: str) -> dict:
    """Each backend of `operator`: usable on a device of this machine, and why not; what "auto" takes per device."""
    import torch
    cuda = torch.cuda.is_available()
    out = {}
    for name, b in REGISTRY[operator].items():
        devices = [d for d in b.devices if d == "cpu" or cuda]
        usable = [d for d in devices if b.needs(d)[0]]
        why = "no CUDA device" if not devices else (b.needs(devices[0])[1] if not usable else b.about)
        out[name] = {"available": bool(usable), "devices": usable, "reason": why}
    auto_cpu = AUTO[operator].get("cpu")
    out["auto_cpu"] = (f"cpp when at most {AUTO_CPP_MAX_DENSITY:.0%} of the padded score grid is unmasked, else torch"
                       if operator == "maxsim" and choose(operator, "cpu", density=0.0) == "cpp"
                       else choose(operator, "cpu")) if auto_cpu is not None else "torch"
    out["auto_cuda"] = choose(operator, "cuda") if cuda else "torch (no CUDA device)"
    return out

