"""User-facing errors: every mistake a caller can make ends here, with a message naming the problem."""


class SimattrError(ValueError):
    """A problem with the caller's input or settings (bad text, model, layer, option) or a failed check."""


class NumericalError(SimattrError):
    """The computation produced NaN or Inf."""


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
