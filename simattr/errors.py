"""User-facing errors: every mistake a caller can make ends here, with a message naming the problem."""


class SimattrError(ValueError):
    """A problem with the caller's input or settings (bad text, model, layer, option) or a failed check."""


class NumericalError(SimattrError):
    """The computation produced NaN or Inf."""


class OutputError(SimattrError):
    """A result could not be written (full disk, permissions); what was written before is kept."""


def check_finite(t, what: str) -> None:
    """NumericalError if `t` (a tensor, an array or a number) holds NaN or Inf: the same report from every method."""
    import numpy as np
    import torch
    finite = torch.isfinite(t).all() if isinstance(t, torch.Tensor) else np.isfinite(np.asarray(t, dtype=float)).all()
    if not bool(finite):
        raise NumericalError(f"NaN or Inf in {what}: check the model, the dtype (fp16 overflows easily) and the inputs")


def warn(message: str, category=UserWarning):
    """warnings.warn attributed to the caller's line: the first frame outside simattr (and the standard library's
    contextlib), so a warning raised inside a job's generator names the user's call, not simattr's internals."""
    import os
    import sys
    import warnings
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = os.path.abspath(frame.f_code.co_filename)
        if not (name.startswith(package + os.sep) or name.endswith(os.sep + "contextlib.py")):
            break
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
