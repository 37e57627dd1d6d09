"""simattr: why two texts are similar under an embedding model, token by token."""
from .api import Explainer, explain
from .encoders import CallableEncoder, Encoder, load_encoder
from .errors import NumericalError, SimattrError
from .explanation import Explanation
from .options import PerSide
from .version import __version__

__all__ = ["explain", "Explainer", "Explanation", "Encoder", "CallableEncoder", "load_encoder", "SimattrError",
           "NumericalError", "PerSide", "__version__"]
