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
import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .. import engine, jobs
from ..errors import NumericalError, SimattrError
from ..options import side as side_value


#: a text's forward-mode passes share launches with other texts only when they fill less than 1 / PACK_BELOW of
#: one (`PathJob.packing`): on the CPU (1024 tokens a launch) below ~25 sequences of 10 tokens, where the
#: per-launch cost dominates. Measured on 32 short pairs (benchmarks/RESULTS.md): with PACK_BELOW = 2 and 1.5x
#: padding IJ at 4 steps packed 2.8 texts a launch and gained nothing (0.96x: the padding took what the larger
#: launches saved); with 4 and 1.25x, BiLRP 1.23x, IJ at 4 steps 1.06x (28 of 64 texts packed)
PACK_BELOW = 4


#: similarity functions of sentence-transformers that are a product of the two embeddings (decomposable as G_aᵀ G_b)
PRODUCT_SIMILARITIES = {"cosine": "cosine", "dot": "dot", "dot_product": "dot", "cos_sim": "cosine"}


#: late-interaction similarities: Σ_i max_j q_i·d_j over the query's and the document's token vectors (mean:
#: divided by the query's token count), decomposed by `MaxSimForm`
LATE_INTERACTION = ("maxsim", "meanmaxsim")


def model_similarity(enc_a, enc_b) -> str:
    """sim="auto": the towers' own similarity function, if it is cosine or dot (or MaxSim, for multi-vector
    towers); a SimattrError for a distance."""
    multi = [bool(getattr(e, "multi_vector", False)) for e in (enc_a, enc_b)]
    if any(multi) and not all(multi):
        raise SimattrError("one tower is a multi-vector (late-interaction) model and the other is not")
    fns = {getattr(enc_a, "similarity_fn", "cosine"), getattr(enc_b, "similarity_fn", "cosine")}
    if all(multi):
        fn = fns.pop() if len(fns) == 1 else None
        if fn not in LATE_INTERACTION:
            raise SimattrError(f"a multi-vector model scores by maxsim or meanmaxsim, not {fn}")
        return fn
    if len(fns) > 1:
        raise SimattrError(f"the two towers score by different similarity functions ({', '.join(sorted(fns))}); "
                           f"pass sim='cosine' or sim='dot'")
    fn = fns.pop() or "cosine"
    if fn not in PRODUCT_SIMILARITIES:
        raise SimattrError(f"the model scores pairs by {fn} distance, which is not a product of the two embeddings: "
                           f"IJ and BiLRP decompose cosine or dot similarity; pass sim='cosine' or sim='dot' to "
                           f"explain one of those instead")
    return PRODUCT_SIMILARITIES[fn]


class DotForm:
    """s(a, b) = f(a)·f(b): the cosine / dot similarity of two embeddings, A = G_aᵀ G_b."""

    def dot(self, u: Tensor, v: Tensor) -> float:
        return float((u.double() * v.double()).sum())

    def combine(self, G_a: Tensor, G_b: Tensor) -> Tensor:
        return G_a.T.double() @ G_b.double()

    def first_order_a(self, G_a: Tensor, fr_b: Tensor) -> Tensor:
        """m_a[u] = G_a[:, u]·f(r_b): what unit u of a adds against b's reference."""
        return G_a.T.double() @ fr_b.double()

    def first_order_b(self, fr_a: Tensor, G_b: Tensor) -> Tensor:
        return G_b.T.double() @ fr_a.double()


class DimsForm(DotForm):
    """The dot product restricted to the dimensions `idx` (an aspect of the embedding): s_S(a, b) = Σ_{k∈S} f_k(a)
    f_k(b), A_S = G_a[S]ᵀ G_b[S]; over a partition of all dimensions the aspects' matrices sum to A."""

    def __init__(self, idx: Tensor):
        self.idx = idx

    def dot(self, u: Tensor, v: Tensor) -> float:
        i = self.idx.to(u.device)
        return float((u.double()[..., i] * v.double()[..., i]).sum())

    def combine(self, G_a: Tensor, G_b: Tensor) -> Tensor:
        i = self.idx.to(G_a.device)
        return G_a[i].T.double() @ G_b[i].double()

    def first_order_a(self, G_a: Tensor, fr_b: Tensor) -> Tensor:
        i = self.idx.to(G_a.device)
        return G_a[i].T.double() @ fr_b[i].double()

    def first_order_b(self, fr_a: Tensor, G_b: Tensor) -> Tensor:
        i = self.idx.to(G_b.device)
        return G_b[i].T.double() @ fr_a[i].double()


def dimension_indices(sel, D: int, what: str = "dims") -> Tensor:
    """A slice / range / list of dimensions as an index tensor, checked against D."""
    if isinstance(sel, (slice, range)):
        idx = list(range(D))[sel] if isinstance(sel, slice) else list(sel)
    else:
        idx = [int(i.__index__()) for i in sel]
    if not idx:
        raise SimattrError(f"{what} selects no dimension of the {D}-dimensional embedding")
    bad = [i for i in idx if not 0 <= i < D]
    if bad:
        raise SimattrError(f"{what} names dimension {bad[0]}, outside the {D}-dimensional embedding (0..{D - 1})")
    if len(set(idx)) != len(idx):
        raise SimattrError(f"{what} names a dimension twice")
    return torch.tensor(idx, dtype=torch.long)


class MaxSimForm:
    """Late interaction with the argmax fixed at the input: s(a, b) = Σ_i q_i·d_π(i), π(i) = argmax_j q_i·d_j of
    the input's token vectors, a bilinear form of the two towers' flattened vectors [K_a·dim], [K_b·dim]; with π
    held, A[u, v] = Σ_i Σ_k G_a[(i, k), u] G_b[(π(i), k), v] (meanmaxsim: divided by K_a) and Σ A completes to
    s_π(a, b) − s_π(a, r_b) − s_π(r_a, b) + s_π(r_a, r_b), s_π(a, b) being the MaxSim score itself."""

    def __init__(self, fa: Tensor, fb: Tensor, k_a: int, k_b: int, mean: bool):
        self.k_a, self.k_b = k_a, k_b
        self.dim = fa.shape[-1] // k_a
        q, d = fa.double().reshape(k_a, self.dim), fb.double().reshape(k_b, self.dim)
        self.match = (q @ d.T).argmax(1)
        self.scale = 1.0 / k_a if mean else 1.0

    def dot(self, u: Tensor, v: Tensor) -> float:
        q, d = u.double().reshape(self.k_a, self.dim), v.double().reshape(self.k_b, self.dim)
        return float(self.scale * (q * d[self.match]).sum())

    def combine(self, G_a: Tensor, G_b: Tensor) -> Tensor:
        ga = G_a.double().reshape(self.k_a, self.dim, -1)
        gb = G_b.double().reshape(self.k_b, self.dim, -1)[self.match]
        return self.scale * torch.einsum("kdu,kdv->uv", ga, gb)

    def first_order_a(self, G_a: Tensor, fr_b: Tensor) -> Tensor:
        ga = G_a.double().reshape(self.k_a, self.dim, -1)
        return self.scale * torch.einsum("kdu,kd->u", ga, fr_b.double().reshape(self.k_b, self.dim)[self.match])

    def first_order_b(self, fr_a: Tensor, G_b: Tensor) -> Tensor:
        gb = G_b.double().reshape(self.k_b, self.dim, -1)[self.match]
        return self.scale * torch.einsum("kd,kdv->v", fr_a.double().reshape(self.k_a, self.dim), gb)

    def partner_norms(self, delta_a: Tensor, delta_b: Tensor) -> tuple:
        """(‖M Δ_b‖, ‖Mᵀ Δ_a‖): what bounds each side's error under this form (|e_aᵀ M Δ_b| ≤ ‖e_a‖ ‖M Δ_b‖ and
        |Δ_aᵀ M e_b| ≤ ‖Mᵀ Δ_a‖ ‖e_b‖), the analogues of the partner's ‖Δf‖ under a dot product."""
        q = delta_a.double().reshape(self.k_a, self.dim)
        d = delta_b.double().reshape(self.k_b, self.dim)
        for_a = self.scale * float(d[self.match].norm())
        gathered = torch.zeros_like(d).index_add_(0, self.match.to(d.device), q)  # Σ_{i: π(i)=j} Δ_a[i]
        return for_a, self.scale * float(gathered.norm())

    def as_dict(self) -> dict:
        return {"match": self.match.tolist(), "query_tokens": self.k_a, "document_tokens": self.k_b,
                "dim": self.dim}


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

    @property
    def pushed(self) -> Tensor:
        """The tangent whose unit blocks are pushed through (delta where none is given)."""
        return self.delta if self.tangent is None else self.tangent


class PathJob(abc.ABC):
    """A path method's job (one pair or many, one set of options) as the hooks of `simattr.jobs.run`."""

    table = None  # the method's Options
    per_side = ("units",)  # options that may differ between the towers

    def __init__(self, enc_a, enc_b, options: dict):
        for enc in (enc_a, enc_b):
            if getattr(enc, "no_gradients", None):
                raise SimattrError(enc.no_gradients)
        o = self.options = self.table.resolve(options)
        self.encoders = (enc_a, enc_b)
        self.units = (side_value(o.units, 0), side_value(o.units, 1))
        self.units_option = o.units
        self.layer, self.mode, self.truncate = o.layer, o.mode, o.truncate
        if self.mode == "auto" and any(getattr(e, "multi_vector", False) for e in (enc_a, enc_b)):
            self.mode = "forward"  # K·dim outputs: one JVP per unit, and no cross passes (MaxSimForm needs both G's)
        self.sim = model_similarity(enc_a, enc_b) if o.sim == "auto" else o.sim
        self.late = self.sim in LATE_INTERACTION
        self.dims, self.return_factors = o.dims, o.return_factors
        if self.late and self.dims is not None:
            raise SimattrError("dims= selects embedding dimensions; a multi-vector model's score is over token vectors")
        # both texts' G's are needed for every pair: no cross passes (`jobs.plan`)
        self.needs_both = self.late or self.dims is not None or self.return_factors
        if self.late and o.sim != "auto":
            raise SimattrError("a multi-vector model scores by MaxSim: leave sim='auto'")
        if any(getattr(e, "multi_vector", False) for e in (enc_a, enc_b)) and not self.late:
            raise SimattrError(f"a multi-vector model scores by MaxSim, not {o.sim}: leave sim='auto'")
        if self.needs_both and o.mode == "cross":
            what = "a late-interaction score" if self.late else "dims= / return_factors"
            raise SimattrError(f"mode='cross' passes one text's G through the other's plain dot product; {what} "
                               f"needs both G's (mode 'forward', 'reverse' or 'auto')")
        self.budget = engine.parse_memory(o.max_memory)
        self.budget_given = self.budget is not None
        self.batch_size, self.contraction = o.internal_batch_size, o.contraction
        self.pack = o.pack and self.batch_size is None  # a given chunk size is the caller's launch shape
        self.out_dim = None

    # ------------------------------------------------------------------ what a method says
    @abc.abstractmethod
    def path(self, side) -> Path:
        """The path of one prepared text."""

    def around(self):
        """The context active around every pass (default: none)."""
        return contextlib.nullcontext()

    def packed_function(self, sides: list) -> Optional[Callable]:
        """F(x, rows): the f of several prepared texts over one padded batch (`Encoder.packed_function`); None (the
        default): the method's texts run alone."""
        return None

    def pass_side(self, side):
        """The side the passes run on (IJ: its float64 re-run where float32 stalled)."""
        return side

    # ------------------------------------------------------------------ shared hooks
    def embedding_size(self, embedding: Tensor) -> int:
        """D of a text's embedding: the job's out_dim, set by its first text; every text (both towers) must match
        (a multi-vector model's K·dim differs per text: the job's out_dim is then its first text's, for planning)."""
        D = embedding.shape[-1]
        if self.out_dim is None:
            self.out_dim = D
        elif D != self.out_dim and not self.late:
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

    def form(self, a, b):
        """The bilinear form the pair's score is (`DotForm`; `DimsForm` for dims= a selection; `MaxSimForm` from
        the input's token vectors)."""
        if self.late:
            return MaxSimForm(a.fx, b.fx, len(a.tokens.scoring), len(b.tokens.scoring), self.sim == "meanmaxsim")
        if self.dims is not None and not isinstance(self.dims, dict):
            return DimsForm(dimension_indices(self.dims, a.fx.shape[-1]))
        return DotForm()

    def selection(self, a, b, score: float) -> Optional[dict]:
        """dims= a selection: which dimensions, the full similarity and the selection's share of it."""
        if self.dims is None or isinstance(self.dims, dict):
            return None
        full = DotForm().dot(a.fx, b.fx)
        return {"dims": dimension_indices(self.dims, a.fx.shape[-1]).tolist(), "full_score": full,
                "share": score / full if full else None}

    def aspects(self, a, b, G_a, G_b, score: float) -> Optional[dict]:
        """dims= a dict of named groups: per group its matrix A_S, the restricted similarity s_S and its share of
        the score, and Σ A_S."""
        if not isinstance(self.dims, dict):
            return None
        out = {}
        for name, sel in self.dims.items():
            form = DimsForm(dimension_indices(sel, a.fx.shape[-1], f"dims[{name!r}]"))
            A = form.combine(G_a, G_b)
            s = form.dot(a.fx, b.fx)
            out[name] = {"dims": form.idx.tolist(), "score": s, "share": s / score if score else None,
                         "interactions": float(A.sum()), "matrix": A.cpu().numpy()}
        return out

    def aspect_extras(self, a, b, G_a, G_b, score: float) -> dict:
        """The extras dims= adds to an explanation: "dims" (a selection) or "aspects" (named groups); {} without."""
        out = {"dims": self.selection(a, b, score), "aspects": self.aspects(a, b, G_a, G_b, score)}
        return {k: v for k, v in out.items() if v is not None}

    def factors(self, G_a, G_b) -> Optional[dict]:
        """return_factors=True: {"a": G_a, "b": G_b} as arrays [D, U]."""
        if not self.return_factors:
            return None
        # copies: a float64 G on the CPU is the cached and job-held tensor itself, which the caller must not reach
        return {"a": G_a.detach().to("cpu", torch.float64, copy=True).numpy(),
                "b": G_b.detach().to("cpu", torch.float64, copy=True).numpy()}

    def combine(self, a, b, G_a: Tensor, G_b: Tensor) -> Tensor:
        """A [U_a, U_b] of a pair from its two G's."""
        return self.form(a, b).combine(G_a, G_b)

    def reference_embedding(self, side) -> Optional[Tensor]:
        """f(r) of a text, the partner's first-order terms are taken against (None: the method has no reference,
        its first-order terms are zero)."""
        return None

    def first_order(self, a, b, G_a, G_b, known: dict) -> tuple:
        """(m_a, m_b) of a pair: m_a = G_aᵀ f(r_b), m_b = G_bᵀ f(r_a) under the pair's form, so that
        s(a, b) = s(r_a, r_b) + Σ m_a + Σ m_b + Σ A; `known` holds one already made by a cross run ("a" / "b");
        (None, None) for a method without a reference."""
        fr_a, fr_b = self.reference_embedding(a), self.reference_embedding(b)
        if fr_a is None or fr_b is None:
            return None, None
        form = self.form(a, b)
        m_a = known.get("a") if G_a is None else form.first_order_a(G_a, fr_b)
        m_b = known.get("b") if G_b is None else form.first_order_b(fr_a, G_b)
        return m_a, m_b

    def begin(self, sides, pair_ids: list):
        self.budget = self.budget or engine.default_budget(sides[pair_ids[0][0]].x.device)

    def attribution(self, side):
        """(G [D, U], plan dict) of one text: forward or reverse mode, as the planner chooses."""
        side = self.pass_side(side)
        path = self.path(side)
        p = self._plan(side, path)
        with self.around():
            G = engine.path_attribution(path.f, path.start, path.delta, path.alphas, path.weights,
                                        side.units.matrix, side.shape.out_dim, p, tangent=path.tangent)
        return G, p.as_dict()

    def _plan(self, side, path: Path) -> engine.Plan:
        return engine.plan(len(side.units), len(path.alphas), side.shape,
                           mode=self.mode if self.mode in engine.MODES else "auto", budget=self.budget,
                           batch_size=self.batch_size, device=side.x.device, contraction=self.contraction,
                           budget_given=self.budget_given)

    def packing(self, side) -> Optional[tuple]:
        """(key, active units, path nodes, tokens) of a text whose forward-mode passes can share launches with other
        texts of the same key (units x nodes: the tangents it pushes through); None when it runs alone:
        packing off, reverse mode, a tower that cannot pack (`pack_key`), or passes that fill 1 / PACK_BELOW of a
        launch themselves."""
        if not self.pack:
            return None
        side = self.pass_side(side)
        path = self.path(side)
        key = side.encoder.pack_key(side.tokens)
        if key is None or type(self).packed_function is PathJob.packed_function or self._plan(side, path).mode != "forward":
            return None
        units = len(engine.active_units(side.units.matrix, path.pushed))
        if PACK_BELOW * units * len(path.alphas) > self.launch_capacity(side, side.tokens.length):
            return None
        return (key, side.x.dtype, str(side.x.device)), units, len(path.alphas), side.tokens.length

    def launch_capacity(self, side, seq: int) -> int:
        """Sequences one launch of packed `seq`-token rows takes (`engine.pack_capacity` of the budget)."""
        shape = dataclasses.replace(self.pass_side(side).shape, seq=seq, fused_attention=False)
        return engine.pack_capacity(shape, self.budget, side.x.device)

    def packed_attributions(self, sides: list) -> Optional[list]:
        """[(G, plan dict)] of several texts of one `packing` key in shared launches (`engine.forward_mode_packed`);
        None when they ran out of memory together or a G is not finite (the caller then makes each alone, chunked
        to the budget, where a text's own NaN is its error)."""
        sides = [self.pass_side(s) for s in sides]
        paths = [self.path(s) for s in sides]
        S = max(s.tokens.length for s in sides)
        F = self.packed_function(sides)
        capacity = self.launch_capacity(sides[0], S)
        try:
            with self.around():
                Gs, ran = engine.forward_mode_packed(
                    F, [(p.start, p.delta, p.alphas, p.weights, p.tangent) for p in paths],
                    [s.units.matrix for s in sides], sides[0].shape.out_dim, capacity)
        except NumericalError:
            return None  # non-finite through a padded row (or one text's own): each text alone says which
        except Exception as exc:  # noqa: BLE001  (only allocation failures are handled)
            if not engine.out_of_memory(exc):
                raise
            if sides[0].x.device.type == "cuda":
                torch.cuda.empty_cache()
            return None
        out = []
        shape = dataclasses.replace(sides[0].shape, seq=S, fused_attention=False)
        for s, path, G in zip(sides, paths, Gs):
            p = self._plan(s, path)
            p.skipped_units = len(s.units) - len(engine.active_units(s.units.matrix, path.pushed))
            # what ran: tangent slots x rows (nodes of all the pack's texts) per launch of S-token rows
            p.unit_chunk, p.node_chunk = ran["slots"], ran["rows"]
            p.estimated_bytes = ran["slots"] * ran["rows"] * shape.forward_element()
            p.reason += f"; packed: {len(sides)} texts in {ran['launches']} launch(es) of {S}-token rows"
            out.append((G, dict(p.as_dict(), packed={"texts": len(sides), "launches": ran["launches"], "tokens": S})))
        return out

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
        p.reason = (f"cross mode: {cot.shape[0]} cotangents (the other side's G columns, and its f(r) for the "
                    f"first-order terms) instead of {D}")
        with self.around():
            M = engine.path_attribution(path.f, path.start, path.delta, path.alphas, path.weights,
                                        other.units.matrix, D, p, tangent=path.tangent, cotangents=cot)
        return list(M.split([G.shape[1] for G in Gs])), dict(p.as_dict(), mode="cross-reverse")
