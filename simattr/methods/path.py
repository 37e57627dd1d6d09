"""What the path methods share (A = G_aᵀ G_b, each G from JVP/VJP passes along a path: ij, bilrp).

A method is a subclass of `PathJob` that says
- which options it has (`table`, a `simattr.options.Options`) and which of them are per side (`per_side`),
- how one text is prepared (`side`), what its path is (`path`: f, start, delta, nodes, weights, tangent),
- what is active around its passes (`around`: nothing for IJ, the LRP rules for BiLRP),
- what it reports (`explanation`);
the passes themselves — one text's G, and the cross passes that give Gᵀ G_other from the other text's VJPs — are
written here once, on the engine (`engine.plan`, `engine.path_attribution`), for the runner `simattr.jobs.run`.
"""
from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .. import engine, jobs
from ..errors import SimattrError
from ..options import side as side_value


#: similarity functions of sentence-transformers that are a product of the two embeddings (decomposable as G_aᵀ G_b)
PRODUCT_SIMILARITIES = {"cosine": "cosine", "dot": "dot", "dot_product": "dot", "cos_sim": "cosine"}


def model_similarity(enc_a, enc_b) -> str:
    """sim="auto": the towers' own similarity function, if it is cosine or dot; a SimattrError for a distance."""
    fns = {getattr(enc_a, "similarity_fn", "cosine"), getattr(enc_b, "similarity_fn", "cosine")}
    if len(fns) > 1:
        raise SimattrError(f"the two towers score by different similarity functions ({', '.join(sorted(fns))}); "
                           f"pass sim='cosine' or sim='dot'")
    fn = fns.pop() or "cosine"
    if fn not in PRODUCT_SIMILARITIES:
        raise SimattrError(f"the model scores pairs by {fn} distance, which is not a product of the two embeddings: "
                           f"IJ and BiLRP decompose cosine or dot similarity; pass sim='cosine' or sim='dot' to "
                           f"explain one of those instead")
    return PRODUCT_SIMILARITIES[fn]


@dataclass
class Path:
    """One text's path for the engine: f, x(α) = start + α·delta at `alphas` with `weights`, and the tangent whose
    unit blocks are pushed through (None: delta itself)."""

    f: Callable
    start: Tensor
    delta: Tensor
    alphas: Sequence[float]
    weights: Sequence[float]
    tangent: Optional[Tensor] = None


class PathJob(abc.ABC):
    """A path method's job (one pair or many, one set of options) as the hooks of `simattr.jobs.run`."""

    table = None  # the method's Options
    per_side = ("units",)  # options that may differ between the towers

    def __init__(self, enc_a, enc_b, options: dict):
        o = self.options = self.table.resolve(options)
        self.encoders = (enc_a, enc_b)
        self.units = (side_value(o.units, 0), side_value(o.units, 1))
        self.units_option = o.units
        self.layer, self.mode, self.truncate = o.layer, o.mode, o.truncate
        self.sim = model_similarity(enc_a, enc_b) if o.sim == "auto" else o.sim
        self.budget = engine.parse_memory(o.max_memory)
        self.budget_given = self.budget is not None
        self.batch_size, self.contraction = o.internal_batch_size, o.contraction
        self.out_dim = None

    # ------------------------------------------------------------------ what a method says
    @abc.abstractmethod
    def path(self, side) -> Path:
        """The path of one prepared text."""

    def around(self):
        """The context active around every pass (default: none)."""
        return contextlib.nullcontext()

    def pass_side(self, side):
        """The side the passes run on (IJ: its float64 re-run where float32 stalled)."""
        return side

    # ------------------------------------------------------------------ shared hooks
    def embedding_size(self, embedding: Tensor) -> int:
        """D of a text's embedding: the job's out_dim, set by its first text; every text (both towers) must match."""
        D = embedding.shape[-1]
        if self.out_dim is None:
            self.out_dim = D
        elif D != self.out_dim:
            raise SimattrError(f"the two towers give embeddings of different sizes {self.out_dim} and {D}")
        return D

    def tower_key(self, tower: int):
        """0 for both towers when they give a text the same G (one encoder, equal per-side options), else tower."""
        same = self.encoders[0] is self.encoders[1] and all(
            jobs.same_option(side_value(self.options[name], 0), side_value(self.options[name], 1))
            for name in self.per_side)
        return 0 if same else tower

    def text_cache_key(self, tower: int, text: str):
        """What a text's G depends on that `begin` chose for it (default: nothing)."""
        return None

    def begin(self, sides, pair_ids: list):
        self.budget = self.budget or engine.default_budget(sides[pair_ids[0][0]].x.device)

    def attribution(self, side):
        """(G [D, U], plan dict) of one text: forward or reverse mode, as the planner chooses."""
        side = self.pass_side(side)
        path = self.path(side)
        p = engine.plan(len(side.units), len(path.alphas), side.shape,
                        mode=self.mode if self.mode in engine.MODES else "auto", budget=self.budget,
                        batch_size=self.batch_size, device=side.x.device, contraction=self.contraction,
                        budget_given=self.budget_given)
        with self.around():
            G = engine.path_attribution(path.f, path.start, path.delta, path.alphas, path.weights,
                                        side.units.matrix, self.out_dim, p, tangent=path.tangent)
        return G, p.as_dict()

    def cross(self, Gs: list, other):
        """VJPs on `other` with the columns of the known sides' G's as cotangents, in one reverse-mode run:
        M[j, u] = Σ_n w_n ⟨J_other(x_n)ᵀ G[:, j], T_u⟩ = (Gᵀ G_other)[j, u], split back per G."""
        D = self.out_dim
        other = self.pass_side(other)
        path = self.path(other)
        cot = torch.cat([G.T.to(other.x.dtype) for G in Gs])
        p = engine.plan(D + 1, len(path.alphas), other.shape, mode="reverse", budget=self.budget,
                        batch_size=self.batch_size, device=other.x.device, contraction=self.contraction,
                        budget_given=self.budget_given)
        p.reason = f"cross mode: {cot.shape[0]} cotangents (the other side's G columns) instead of {D}"
        with self.around():
            M = engine.path_attribution(path.f, path.start, path.delta, path.alphas, path.weights,
                                        other.units.matrix, D, p, tangent=path.tangent, cotangents=cot)
        return list(M.split([G.shape[1] for G in Gs])), dict(p.as_dict(), mode="cross-reverse")
