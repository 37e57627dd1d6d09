"""Explanation methods. Each module says which f, which path and which units; the engine does the rest."""
from .ij import explain_ij

METHODS = {"ij": explain_ij}
