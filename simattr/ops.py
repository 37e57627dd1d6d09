"""Backend dispatch: which compiled paths (Triton, C++/CUDA extension) are usable here, and why not."""
from __future__ import annotations

import importlib
import os


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
        "attention": {"available": True, "reason": "eager (math) attention: forward-mode AD everywhere"},
        "threads": torch.get_num_threads(),
    }
