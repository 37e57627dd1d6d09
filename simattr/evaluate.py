"""Faithfulness of a pairwise explanation, measured against the model by occlusion.

A token matrix A claims how much each pair of units (u of a, v of b) contributes to s(a, b). Removing a unit —
replacing its tokens' vectors at the input of block `layer` by the reference's (default: the pad token's embedding
at the same position, IJ's reference) — gives the model's own answer, with no gradient:

- second order (pairs): the occlusion interaction of u and v,
      I[u, v] = s(a, b) − s(a∖u, b) − s(a, b∖v) + s(a∖u, b∖v),
  the discrete counterpart of what A[u, v] claims (for IJ, Σ A equals this identity with everything removed).
  `faithfulness` reports the Pearson and Spearman correlation of A with I over all pairs. It needs the U_a + U_b
  single-unit occlusions only: s(a∖u, b∖v) = f(a∖u)·f(b∖v).
- first order (units): the row sums of A (unit u of a against all of b) against the occlusion interaction of u with
  all of b, Δ_a[u] = (f(a) − f(a∖u))·(f(b) − f(r_b)) = I[u, everything of b] (r_b: b with every unit removed); the
  column sums against Δ_b likewise. And deletion curves: remove a's units one by one, most relevant first (row
  sums), recording a′'s interaction with b, f(a′)·(f(b) − f(r_b)) = s(a′, b) − s(a′, r_b); the same for b. The area
  under a curve (the mean of its points) should be lower for "most" and higher for "least" than for "random" (the
  MoRF / LeRF test, per side). Measuring against f(b) − f(r_b) rather than f(b) is what makes these exact for IJ
  on a linear model (its row sums are G_a[:, u]·(f(b) − f(r_b))), whatever the reference.

The occlusion settings follow the explanation where it has them (IJ: layer, reference, sim; BiLRP: layer, sim; the
set-based methods' layer is an output layer, so occlusion stays at the embeddings); arguments override.

Removing the units of a *pair* from both texts at once is not used: the texts then converge to the same reference
sequence, so their similarity rises again whatever the explanation (measured on a MiniLM pair: the "most relevant
first" curves of IJ, BiLRP, OT and MaxSim all lay above the random one). All occlusions of one text run as one batched forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .encoders import prepared
from .errors import SimattrError
from .options import PerSide, side

ORDERS = ("most", "least", "random")


@dataclass
class Occlusion:
    """The model's answers by occlusion for one pair (units as in `labels_a`, `labels_b`)."""
    score: float                  # s(a, b)
    interaction: np.ndarray       # [U_a, U_b] I[u, v]
    delta_a: np.ndarray           # [U_a] (f(a) − f(a∖u))·(f(b) − f(r_b)): u against all of b
    delta_b: np.ndarray           # [U_b] likewise
    labels_a: list
    labels_b: list


@dataclass
class Faithfulness:
    """How well an explanation's matrix agrees with the model's occlusion answers."""
    pearson: float                # corr(A, I) over all pairs (second order)
    spearman: float
    pearson_rows: float           # corr(Σ_v A[u, v], Δ_a[u]) and corr(Σ_u A[u, v], Δ_b[v]), averaged (first order)
    curves: Dict[str, List[List[float]]]  # order -> [curve of a, curve of b]: f(a′)·(f(b) − f(r_b)) after 0, 1, ...
                                          # removed units (b's curve likewise)
    auc: Dict[str, float]         # order -> mean area of the two sides' curves (random: mean over runs)
    random_std: Optional[float]   # spread of the random runs' areas
    occlusion: Occlusion = field(repr=False)
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        areas = ", ".join(f"{o} {v:.4f}" for o, v in self.auc.items())
        rnd = f" ± {self.random_std:.4f}" if self.random_std is not None else ""
        return (f"faithfulness ({self.settings.get('method')}): pairs vs occlusion interactions r = {self.pearson:.3f} "
                f"(Spearman {self.spearman:.3f}); units r = {self.pearson_rows:.3f}; deletion areas {areas}{rnd} "
                f"(most < random < least is faithful)")

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "occlusion"}
        occ = self.occlusion
        out["occlusion"] = {"score": occ.score, "interaction": occ.interaction.tolist(), "delta_a": occ.delta_a.tolist(),
                            "delta_b": occ.delta_b.tolist(), "labels_a": occ.labels_a, "labels_b": occ.labels_b}
        return out


def _removed(side, masks: torch.Tensor) -> torch.Tensor:
    """[T, S, H]: the side's input with the tokens of `masks` [T, S] (1 = removed) replaced by the reference."""
    keep = masks.to(side.x.dtype)[..., None]
    return side.x + keep * (side.r - side.x)


def _embed(side, masks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return side.f(_removed(side, masks)).double()


def _sides(explainer, a, b, layer, reference, units, sim, truncate):
    from .methods.ij import prepare_side
    if sim not in ("cosine", "dot"):
        raise SimattrError(f"sim must be 'cosine' or 'dot', got {sim!r}")
    if not isinstance(units, str) or units not in ("token", "word"):
        raise SimattrError(f"faithfulness needs token or word units, got {units!r}")
    if isinstance(reference, (tuple, list)):
        raise SimattrError("one reference for both texts, or PerSide(ref_a, ref_b) for one each")
    ref_a, ref_b = side(reference, 0), side(reference, 1)
    enc_a, enc_b = explainer.encoder_a, explainer.encoder_b
    sa = prepare_side(enc_a, a, layer, ref_a, units, sim == "cosine", truncate)
    sb = prepare_side(enc_b, b, layer, ref_b, units, sim == "cosine", truncate)
    return sa, sb


def _occlusion(sa, sb) -> Occlusion:
    Ma, Mb = sa.units.matrix, sb.units.matrix  # [U, S] 0/1
    ea = _embed(sa, torch.cat([torch.zeros_like(Ma[:1]), Ma]))  # [1 + U_a, D]: a, then a∖u
    eb = _embed(sb, torch.cat([torch.zeros_like(Mb[:1]), Mb]))
    s = ea @ eb.T  # s[i, j]: i = 0 is a, i = u + 1 is a∖u (likewise j)
    full = s[0, 0]
    inter = full - s[1:, :1] - s[:1, 1:] + s[1:, 1:]
    delta_a = (ea[:1] - ea[1:]) @ (sb.fx.double() - sb.fr.double())
    delta_b = (eb[:1] - eb[1:]) @ (sa.fx.double() - sa.fr.double())
    return Occlusion(float(full), inter.cpu().numpy(), delta_a.cpu().numpy(), delta_b.cpu().numpy(),
                     sa.units.labels, sb.units.labels)


def occlusion(explainer, a: str, b: str, layer: int = 0, reference=None, units: str = "token", sim: str = "cosine",
              truncate: bool = False) -> Occlusion:
    """The model's pairwise answers by occlusion: I[u, v], Δ_a, Δ_b (see the module docstring)."""
    with prepared(explainer.encoder_a, explainer.encoder_b):
        sa, sb = _sides(explainer, a, b, layer, reference, units, sim, truncate)
        return _occlusion(sa, sb)


def deletion_order(relevance: np.ndarray, order: str, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Unit indices in the order a deletion curve removes them."""
    if order == "most":
        return np.argsort(-relevance, kind="stable")
    if order == "least":  # the mirror image of "most", ties included
        return np.argsort(-relevance, kind="stable")[::-1].copy()
    if order == "random":
        return (rng or np.random.default_rng(0)).permutation(len(relevance))
    raise SimattrError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


def _curve(side, other_delta: torch.Tensor, idx: np.ndarray) -> np.ndarray:
    """f(side with its units idx[:k] removed)·(f(other) − f(r_other)) for k = 0..U."""
    M = side.units.matrix
    removed = torch.cumsum(M[torch.as_tensor(idx, dtype=torch.long, device=M.device)], 0).clamp(max=1)
    steps = torch.cat([torch.zeros_like(M[:1]), removed])  # row k: the units idx[:k] removed
    return (_embed(side, steps) @ other_delta).cpu().numpy()


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _rank(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel().copy()
    # values at rounding level of the largest are zeros (an exact 0 of one side and 1e-17 of the other must tie)
    x[np.abs(x) <= 1e-12 * (np.abs(x).max() if x.size else 0.0)] = 0.0
    order = np.argsort(x, kind="stable")
    ranks = np.empty_like(x)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    for v in np.unique(x):  # ties share their mean rank
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def _from_settings(explanation, layer, reference, sim):
    """(layer, reference, sim): the arguments given, else what the explanation was made with (IJ: all three; BiLRP:
    layer and sim; set-based methods: their layer is an output layer, so the embeddings), else the defaults."""
    st = explanation.settings or {}
    method = explanation.method
    if layer is None:
        layer = st.get("layer", 0) if method in ("ij", "bilrp") else 0
    if sim is None:
        sim = st.get("sim", "cosine") if method in ("ij", "bilrp") else "cosine"
    if reference is None and method == "ij":
        reference = _reference_of(st.get("reference", "pad"))
    return int(layer), reference, sim


def _reference_of(described):
    """The reference option back from its description in IJ's settings ("pad", "zero", {"text": ...}, per side)."""
    if isinstance(described, (list, tuple)):
        return PerSide(*(_reference_of(d) for d in described))
    if described in (None, "pad", "zero"):
        return described
    if isinstance(described, dict) and "text" in described:
        return described["text"]
    raise SimattrError(f"the explanation used a reference that its settings cannot restore ({described!r}): pass "
                       f"reference=... to faithfulness")


def faithfulness(explainer, a: str, b: str, explanation, random_runs: int = 10, seed: int = 0,
                 layer: Optional[int] = None, reference=None, units=None, sim: Optional[str] = None,
                 truncate: bool = False) -> Faithfulness:
    """Compare `explanation` (any method) for (a, b) with the model's occlusion answers (module docstring).

    explainer: the `simattr.Explainer` whose model is evaluated. units ("token" or "word"), layer (where tokens are
    replaced), reference (what a removed unit becomes: "pad", "zero", a text, or a per-side pair) and sim: default
    to what the explanation was made with (see `_from_settings`); truncate: as in `explain`; random_runs: shuffled
    deletion orders. The texts must be the ones explained: unit labels are checked.
    """
    from .methods.ij import describe_reference
    units = units or explanation.settings.get("units", "token")
    layer, reference, sim = _from_settings(explanation, layer, reference, sim)
    A = np.asarray(explanation.matrix, dtype=np.float64)
    with prepared(explainer.encoder_a, explainer.encoder_b):
        sa, sb = _sides(explainer, a, b, layer, reference, units, sim, truncate)
        if A.shape != (len(sa.units), len(sb.units)) or list(explanation.tokens_a) != list(sa.units.labels) \
                or list(explanation.tokens_b) != list(sb.units.labels):
            raise SimattrError(f"the explanation ({A.shape[0]} x {A.shape[1]} units) is not of these texts "
                               f"({len(sa.units)} x {len(sb.units)} {units} units, or other labels): pass the texts, "
                               f"units and explainer it was made with")
        occ = _occlusion(sa, sb)
        delta_a = sa.fx.double() - sa.fr.double()  # what a's units interact with: f(a) − f(r_a)
        delta_b = sb.fx.double() - sb.fr.double()
        rng = np.random.default_rng(seed)
        rel = {"a": A.sum(1), "b": A.sum(0)}
        curves, auc, rand_areas = {}, {}, []
        for order in ORDERS:
            runs = random_runs if order == "random" else 1
            per_run = []
            for _ in range(runs):
                ca = _curve(sa, delta_b, deletion_order(rel["a"], order, rng))
                cb = _curve(sb, delta_a, deletion_order(rel["b"], order, rng))
                per_run.append((ca, cb))
            curves[order] = [np.mean([r[0] for r in per_run], 0).tolist(), np.mean([r[1] for r in per_run], 0).tolist()]
            areas = [0.5 * (r[0].mean() + r[1].mean()) for r in per_run]
            auc[order] = float(np.mean(areas))
            if order == "random":
                rand_areas = areas
    rows = [c for c in (_corr(rel["a"], occ.delta_a), _corr(rel["b"], occ.delta_b)) if c == c]
    return Faithfulness(
        pearson=_corr(A, occ.interaction), spearman=_corr(_rank(A), _rank(occ.interaction)),
        pearson_rows=float(np.mean(rows)) if rows else float("nan"),
        curves=curves, auc=auc, random_std=float(np.std(rand_areas)) if len(rand_areas) > 1 else None,
        occlusion=occ, settings={"method": explanation.method, "layer": layer, "units": units,
                                 "reference": describe_reference(reference), "sim": sim, "random_runs": random_runs,
                                 "seed": seed})


__all__ = ["faithfulness", "occlusion", "deletion_order", "Faithfulness", "Occlusion", "ORDERS"]
