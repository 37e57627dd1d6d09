"""Explanation methods. Each module says which f, which path and which units; the engine does the rest."""
from .bilrp import explain_bilrp
from .ij import explain_ij

METHODS = {"ij": explain_ij, "bilrp": explain_bilrp}
