"""User-facing errors: every mistake a caller can make ends here, with a message naming the problem."""


class SimattrError(ValueError):
    """A problem with the caller's input or settings (bad text, model, layer, option) or a failed check."""


class NumericalError(SimattrError):
    """The computation produced NaN or Inf."""
