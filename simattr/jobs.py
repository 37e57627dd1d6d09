"""Explaining many pairs on one engine: each text's G at most once, and a plan that says how each pair's A is made.

For IJ and BiLRP the token matrix is A = G_aᵀ G_b, and G of a text depends on that text alone (reference, units,
layer and path are settings of the whole job). A pair's A can therefore be made in two ways:

* **both**: G of both texts is known ("materialised"): A = G_aᵀ G_b, no pass at all;
* **cross**: G of one text is known; VJPs on the other text with that G's columns as cotangents give A directly,
  one VJP per active unit of the known text (`engine.reverse_mode(..., cotangents=G.T)`); all cross passes on one
  text run as one reverse-mode run.

Every text whose G is materialised is paid for once per job, however many pairs it is in (and not at all when a
`GCache` holds it). The planner chooses which texts to materialise. Cost model: passes × sequence length (a pass
through an S-token sequence costs about S); materialising text t costs min(U_t, D)·S_t (forward mode, one JVP per
active unit, or reverse mode, one VJP per output dimension), a cross pass on text o with known text k costs
U_k·S_o. For a single pair this is the single-pair rule (cross iff U_small < U_large: S_large cancels), so
`explain` and `explain_many` make the same choices; for a query against many documents the query's G is made once
and each document costs min(U_doc JVPs, U_query VJPs); in an all-pairs grid every text is typically made once.
(Measured, MiniLM, 1 thread, 50 steps: a 7-token query against a 120-token document, cross 11.9 s vs 176 s
per-side forward; 5 vs 4 active units 1.75 s vs 1.9 s.)

The choice is a greedy descent: start with every text materialised (each pair "both") and drop, one at a time,
the text whose drop lowers the total cost most (a dropped text's pairs become "cross" with the partner known; a
text whose partner in some pair is already dropped cannot be dropped), until no drop helps. Drops only make
later drops of neighbours costlier or impossible, so a lazy heap of drop gains is exact.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, Sequence

import torch

from . import runtime
from .engine import PAIR_MODES, named
from .errors import SimattrError

#: bytes of prepared texts (hidden states at the layer, references, embeddings) a job keeps; the others are
#: prepared again when needed — a forward pass or two, against the U x steps JVPs of their G
SIDE_CACHE_BYTES = 512 << 20


@dataclass
class Item:
    """A distinct text of one tower: its active units (the passes forward mode makes) and its token length."""

    units: int
    length: int
    cached: bool = False  # its G is in the caller's cache (`GCache`): free to use


@dataclass
class PairPlan:
    materialise: set  # item ids whose G is computed (once)
    how: list  # per pair: "both", or "cross-a" / "cross-b" (the side whose G is known)
    cost: float  # modelled cost of this plan (passes x tokens)
    pairwise_cost: float  # modelled cost of explaining the pairs one by one (no G shared)

    def as_dict(self) -> dict:
        return {"materialised": len(self.materialise), "cross": sum(h != "both" for h in self.how),
                "both": sum(h == "both" for h in self.how), "cost": self.cost, "pairwise_cost": self.pairwise_cost}


def _materialise_cost(item: Item, out_dim: int, mode: str) -> float:
    if item.cached:
        return 0.0
    passes = {"forward": item.units, "reverse": out_dim}.get(mode, min(item.units, out_dim))
    return float(passes * item.length)


def _pair_cost(how: str, a: Item, b: Item) -> float:
    return {"both": 0.0, "cross-a": float(a.units * b.length), "cross-b": float(b.units * a.length)}[how]


def _single_pair(a: Item, b: Item, out_dim: int, mode: str) -> float:
    """Cost of one pair alone: the cheaper of per-side G and cross with the smaller side known."""
    per_side = _materialise_cost(a, out_dim, mode) + _materialise_cost(b, out_dim, mode)
    if mode in ("forward", "reverse"):
        return per_side
    small, large = (a, b) if a.units <= b.units else (b, a)
    cross = _materialise_cost(small, out_dim, "auto") + small.units * large.length
    return cross if mode == "cross" else min(per_side, cross)


def plan_pairs(items: Sequence[Item], pairs: Sequence[tuple], out_dim: int, mode: str = "auto") -> PairPlan:
    """Which items to materialise and how each pair (ia, ib) — indices into `items` — gets its A.

    mode: "auto" (greedy, above), "forward" / "reverse" (every G materialised in that mode, no cross pass),
    "cross" (the smaller side of each pair materialised — ties: side a — and A by cross passes, except where both
    sides' G are made anyway)."""
    if mode not in PAIR_MODES:
        raise SimattrError(f"unknown mode {mode!r}; choose one of {', '.join(PAIR_MODES)}")
    pairwise = sum(_single_pair(items[i], items[j], out_dim, mode) for i, j in pairs)
    # a pair repeated, or (a, b) and (b, a), costs once: the runner makes each distinct cross product once
    distinct = list(dict.fromkeys((min(i, j), max(i, j)) for i, j in pairs))
    if mode == "cross":
        keep = {i if items[i].units <= items[j].units else j for i, j in pairs}
    else:
        keep = set(range(len(items))) if mode != "auto" else _greedy(items, distinct, out_dim)

    def how(i, j):
        return "both" if i in keep and j in keep else ("cross-a" if i in keep else "cross-b")
    cost = sum(_materialise_cost(items[t], out_dim, mode) for t in keep) + \
        sum(_pair_cost(how(i, j), items[i], items[j]) for i, j in distinct)
    return PairPlan(materialise=keep, how=[how(i, j) for i, j in pairs], cost=cost, pairwise_cost=pairwise)


class GCache:
    """G's of texts kept across jobs (`Explainer(cache_size=N)`), least recently used dropped first.

    Keys are the job's `cache_key(tower)` and the text, and hold values only, so a kept G is served only when it is
    the G the job would compute: the model by `model_fingerprint` (which object, and the storage, version, shape,
    dtype and device of every parameter and buffer of the model and its head: any in-place change through PyTorch —
    `load_state_dict`, an optimizer step, `p.add_()` under no_grad, `nn.init` — and any new `p.data` give another
    key), every option G depends on by `option_key` (a reference tensor by its contents, unit spans by value). A
    tower whose reference or units is a callable is keyed `NO_CACHE`: its G is computed on every call and neither
    stored nor read (a function can return other values each time).

    Not seen by the key — call `clear()` (`Explainer.clear_cache()`) after any of these: writes into the weights
    that bypass PyTorch's version counter (`p.data.add_()`, `p.data.copy_()`: `.data` is an untracked alias;
    writes through `p.detach().numpy()` or DLPack); changes to the model that are not in its tensors (config values
    such as `layer_norm_eps`, a module's `eps`, swapped activation functions, forward hooks); changes inside a
    `CallableEncoder`'s functions or a head that is a plain function (only which function it is is keyed), or to
    the tokenizer's settings (only which tokenizer it is is keyed)."""

    def __init__(self, max_texts: int):
        self.max_texts, self.kept, self.hits = int(max_texts), OrderedDict(), 0

    def __contains__(self, key):
        return not _bypassed(key) and key in self.kept

    def get(self, key):
        self.kept.move_to_end(key)
        self.hits += 1
        return self.kept[key]

    def put(self, key, value):
        if _bypassed(key):
            return
        self.kept[key] = value
        self.kept.move_to_end(key)
        while len(self.kept) > self.max_texts:
            self.kept.popitem(last=False)

    def clear(self):
        self.kept.clear()


class _NoCache:
    __slots__ = ()

    def __repr__(self):
        return "NO_CACHE"


#: the cache key of a G that is not kept (an option given as a callable, or a model whose tensors cannot be read)
NO_CACHE = _NoCache()


def _bypassed(key) -> bool:
    """A key `GCache` neither stores nor finds: NO_CACHE, or (NO_CACHE, text) as `run` makes them."""
    return key is NO_CACHE or (isinstance(key, tuple) and len(key) > 0 and key[0] is NO_CACHE)


def cache_key(*parts):
    """A job's `cache_key(tower)` from its parts (values, or (option name, value) pairs from `Options.key`):
    NO_CACHE if any part or value is."""
    refused = lambda p: p is NO_CACHE or (isinstance(p, tuple) and len(p) == 2 and p[1] is NO_CACHE)
    return NO_CACHE if any(refused(p) for p in parts) else parts


def tensor_key(t: torch.Tensor):
    """A tensor by value: dtype, shape and a BLAKE2b digest of its bytes (NO_CACHE if they cannot be read, e.g.
    sparse tensors). Costs a copy to the CPU: meant for small tensors (a reference is [1, S, H])."""
    try:
        flat = t.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        digest = hashlib.blake2b(flat.view(torch.uint8).numpy().tobytes(), digest_size=32).digest()
    except Exception:  # noqa: BLE001
        return NO_CACHE
    return ("tensor", str(t.dtype), tuple(t.shape), digest)


def _spans_key(spans):
    """Unit spans by the tokens of each span, read as `units.make_units` reads them: a (start, stop) pair of ints is
    a range, anything else a list of token indices."""
    out = []
    for sp in spans:
        if isinstance(sp, tuple) and len(sp) == 2 and all(isinstance(v, int) for v in sp):
            out.append(tuple(range(sp[0], sp[1])))
        else:
            out.append(tuple(int(v) for v in sp))
    return ("spans", tuple(out))


def option_key(x):
    """A hashable stand-in for an option value, by value: None, strings and numbers as they are, a tensor by its
    contents (`tensor_key`), a list or tuple of unit spans by the tokens of each span. NO_CACHE for what cannot be
    keyed by value: a callable (a reference or units given as a function), or anything else."""
    if x is None or isinstance(x, (str, int, float)):
        return x
    if isinstance(x, torch.Tensor):
        return tensor_key(x)
    if callable(x):
        return NO_CACHE
    if isinstance(x, (list, tuple)):
        try:
            return _spans_key(x)
        except Exception:  # noqa: BLE001
            return NO_CACHE
    return NO_CACHE


_SERIALS, _NEXT_SERIAL = {}, itertools.count()  # id(obj) -> (weak reference to obj, serial)


def _serial(obj):
    """A number for `obj` while it lives, never given to another object (unlike id(), reused once it is freed)."""
    entry = _SERIALS.get(id(obj))
    if entry is not None and entry[0]() is obj:
        return entry[1]
    key = id(obj)
    try:
        ref = weakref.ref(obj, lambda r: _SERIALS.pop(key) if _SERIALS.get(key, (None,))[0] is r else None)
    except TypeError:  # no weak references to it: its id (it is held by the encoder)
        return ("id", key)
    serial = next(_NEXT_SERIAL)
    _SERIALS[key] = (ref, serial)
    return serial


def _tensors(module: torch.nn.Module) -> tuple:
    # every parameter and buffer of every submodule (a tied one twice); the storage's serial: a new p.data is
    # another key even where it reuses the address of data freed before
    return (_serial(module), tuple((_serial(t.untyped_storage()), t.data_ptr(), t._version, t.shape, t.stride(),
                                    t.dtype, t.device)
                                   for mod in module.modules() for d in (mod._parameters, mod._buffers)
                                   for t in d.values() if t is not None))


def _part(x):
    if x is None:
        return None
    if isinstance(x, torch.nn.Module):
        return _tensors(x)
    owner = getattr(x, "__self__", None)  # a bound method of a module
    return (_serial(x), _tensors(owner) if isinstance(owner, torch.nn.Module) else None)


def model_fingerprint(enc):
    """A cheap key of everything of an encoder a G depends on that can change in place: which encoder, tokenizer,
    model and head (or a CallableEncoder's functions), its pooling, prompt and route settings, and per parameter and buffer (of the
    model and of a head that is a module) its storage, data pointer, version counter (bumped by every in-place
    change made through PyTorch), shape, stride, dtype and device. NO_CACHE if the tensors cannot be read (a
    tensor without storage). What it cannot see: `GCache`. Cost: 0.3-0.5 ms for MiniLM's 105 tensors (one CPU
    thread, on a busy machine), under 1% of even a 4-step explain of two short texts."""
    try:
        return (_serial(enc), _serial(getattr(enc, "tokenizer", None)),
                tuple(getattr(enc, name, None) for name in ("pooling", "normalized", "max_length", "truncate_dim",
                                                          "similarity_fn", "prompt", "include_prompt",
                                                          "pool_include_prompt", "route")),
                tuple(_part(getattr(enc, name, None)) for name in ("model", "head", "_embed", "_encode")))
    except Exception:  # noqa: BLE001
        return NO_CACHE


def same_option(x, y) -> bool:
    """Equal reference / units options of two towers within one job (strings, None, lists of spans by value;
    tensors and callables by identity)."""
    if x is y:
        return True
    try:
        return isinstance(x, (str, list, tuple, type(None))) and bool(x == y)
    except Exception:  # noqa: BLE001
        return False


def _greedy(items, pairs, out_dim) -> set:
    keep = set(range(len(items)))
    partners = [[] for _ in items]  # item -> [(partner, pair cost if this item is dropped)]
    for i, j in pairs:
        if i == j:  # a text paired with itself: its G is needed
            partners[i].append((j, float("inf")))
            continue
        partners[i].append((j, _pair_cost("cross-b", items[i], items[j])))
        partners[j].append((i, _pair_cost("cross-a", items[i], items[j])))

    def gain(t):  # cost saved by dropping t (None: not allowed)
        extra = 0.0
        for partner, c in partners[t]:
            if partner not in keep:
                return None
            extra += c
        return _materialise_cost(items[t], out_dim, "auto") - extra

    heap = [(-g, t) for t in keep if (g := gain(t)) is not None and g > 0]
    heapq.heapify(heap)
    while heap:
        neg, t = heapq.heappop(heap)
        if t not in keep:
            continue
        g = gain(t)
        if g is None or g <= 0:
            continue
        if g != -neg:  # stale: gains only fall as neighbours are dropped
            heapq.heappush(heap, (-g, t))
            continue
        keep.discard(t)
    return keep


class PairJob(Protocol):
    """What a method gives the runner (methods/ij.py `IJJob`, methods/bilrp.py `BiLRPJob`)."""

    mode: str  # "auto", "forward", "reverse" or "cross" (plan_pairs)
    out_dim: int  # D, known once the job has prepared its first text (the job sets it itself)

    def context(self):
        """Context manager around the whole job (prepared encoders, attention, rules)."""

    def tower_key(self, tower: int):
        """Equal keys for towers whose G of a text is the same (one encoder, same reference and units)."""

    def cache_key(self, tower: int):
        """Everything a text's G depends on besides the text (after `begin`), for `GCache`."""

    def text_cache_key(self, tower: int, text: str):
        """What else a text's G depends on that `begin` chose for it (IJ: its adaptive nodes; None: nothing)."""

    def side(self, tower: int, text: str):
        """Everything of one text that the passes need (tower 0: encoder a, 1: encoder b)."""

    def combine(self, side_a, side_b, G_a, G_b):
        """A [U_a, U_b] of a pair from its two G's (G_aᵀ G_b for a dot product)."""

    def release(self, tower: int, text: str):
        """Optional: the text's last pair of the job is done; drop what the job holds for it."""

    def reference_embedding(self, side):
        """f(r) of a text for the partner's first-order terms (None: no reference; one more cotangent in a cross
        run otherwise)."""

    def first_order(self, side_a, side_b, G_a, G_b, known: dict):
        """(m_a, m_b): the first-order terms of the score's decomposition (methods/path.py)."""

    def item(self, side) -> Item:
        ...

    def begin(self, sides, pairs: list):
        """Planning: the job-wide settings that need every side (IJ: steps='auto'), decided once before any pass
        and not changed after; sides[t] gives text t's side."""

    def attribution(self, side):
        """(G [D, U], plan dict) of one text."""

    def cross(self, Gs: list, other):
        """([M_k [U_k, U_other] = G_kᵀ G_other for each G_k], plan dict): one reverse-mode run on `other` whose
        cotangents are the columns of every G_k (the primal pass and its saved activations shared)."""

    def explanation(self, a, b, A, G_a, G_b, plans: list, seconds: float):
        ...


#: texts prepared together by a job that can (`Sides._batch`, `job.sides_batch`: BiLRP's hidden states and
#: embeddings of short texts in three batched forward passes instead of three per text)
SIDE_BATCH = 32


class Sides:
    """The job's texts, prepared on demand (`job.side`) and kept up to `max_bytes` of tensors, least recently used
    dropped first, so a job of any size holds a bounded amount of them."""

    def __init__(self, job, keys: list, max_bytes: int = SIDE_CACHE_BYTES):
        self.job, self.keys, self.max_bytes = job, keys, max_bytes
        self.kept, self.bytes, self.prepared = OrderedDict(), 0, 0

    def __getitem__(self, t: int):
        if t in self.kept:
            self.kept.move_to_end(t)
            return self.kept[t][0]
        batch = self._batch(t)
        made = None
        if len(batch) > 1:
            with named("prepare_texts"):
                made = self.job.sides_batch(self.keys[t][0], [self.keys[u][1] for u in batch])
        if made is None:
            with named("prepare_text"):
                batch, made = [t], [self.job.side(*self.keys[t])]
        for u, side in zip(reversed(batch), reversed(made)):  # t kept last: the most recently used
            self._keep(u, side)
        return self.kept[t][0]

    def _batch(self, t: int) -> list:
        """t and the next texts of its tower not kept, to prepare together (`job.sides_batch`): at most
        SIDE_BATCH texts, and [t] alone for a job that prepares one text at a time."""
        if getattr(self.job, "sides_batch", None) is None or not getattr(self.job, "pack", False):
            return [t]
        tower = self.keys[t][0]
        out = [t]
        for u in range(t + 1, len(self.keys)):
            if len(out) == SIDE_BATCH:
                break
            if u not in self.kept and self.keys[u][0] == tower:
                out.append(u)
        return out

    def _keep(self, t: int, side):
        self.prepared += 1
        size = _nbytes(side)
        self.kept[t] = (side, size)
        self.kept.move_to_end(t)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self.kept) > 1:
            self.bytes -= self.kept.popitem(last=False)[1][1]

    def drop(self, t: int):
        if t in self.kept:
            self.bytes -= self.kept.pop(t)[1]


def _nbytes(side) -> int:
    """Bytes of the arrays a side holds (its hidden states, reference, embeddings)."""
    return sum(v.nbytes for v in vars(side).values() if hasattr(v, "nbytes") and hasattr(v, "dtype"))


def pair_indices(n_a: int, n_b: int, all_pairs: bool = False) -> list:
    """(i, j) per pair: every (a, b) when all_pairs, else the k-th of each side (one text on a side pairs with all)."""
    if all_pairs:
        return [(i, j) for i in range(n_a) for j in range(n_b)]
    if n_a != n_b and 1 not in (n_a, n_b):
        raise SimattrError(f"{n_a} texts a and {n_b} texts b: give equal numbers, one text on a side, or "
                           f"all_pairs=True")
    return [(0 if n_a == 1 else k, 0 if n_b == 1 else k) for k in range(max(n_a, n_b))]


@dataclass
class JobPlan:
    """What `plan` decides before any pass: the distinct texts, each pair's two of them, which G's are made and how
    each pair's A is made. Read by `execute`; nothing in it changes while the job runs."""

    texts: list  # item id -> (tower, text)
    ids: list  # pair -> (item id a, item id b)
    items: list  # item id -> Item
    pairs: PairPlan
    cache_keys: Optional[list]  # item id -> its GCache key (None: no cache)
    setup_seconds: float  # per pair: its share of tokenising, f(x), f(r) and choosing the steps

    def known_and_other(self, q: int) -> tuple:
        """(the text whose G is known, the text the cross passes run on) of a pair made by cross passes."""
        i, j = self.ids[q]
        return (i, j) if self.pairs.how[q] == "cross-a" else (j, i)


def distinct_texts(job: PairJob, texts_a: Sequence[str], texts_b: Sequence[str], pairs: list) -> tuple:
    """(texts, ids): each distinct (tower key, text) once — towers whose G of a text is the same share it — and
    per pair its two item ids."""
    index, texts, ids = {}, [], []
    for i, j in pairs:
        pair_ids = []
        for tower, text in ((0, texts_a[i]), (1, texts_b[j])):
            key = (job.tower_key(tower), text)
            if key not in index:
                index[key] = len(texts)
                texts.append((tower, text))
            pair_ids.append(index[key])
        ids.append(tuple(pair_ids))
    return texts, ids


def plan(job: PairJob, sides: "Sides", texts: list, ids: list, cache: Optional[GCache], t_start: float) -> JobPlan:
    """The job's plan: each text's Item, the method's job-wide settings (`job.begin`: IJ's steps), the cache keys
    (a tower's key once per job, not once per text) and the pair plan."""
    items = [job.item(sides[t]) for t in range(len(texts))]
    with named("begin"):
        job.begin(sides, ids)
    cache_keys = None
    if cache is not None:
        tower_keys = {tower: job.cache_key(tower) for tower in {tower for tower, _ in texts}}
        cache_keys = [(tower_keys[tower], text, job.text_cache_key(tower, text)) for tower, text in texts]
        for item, key in zip(items, cache_keys):
            item.cached = key in cache
    mode = job.mode
    if getattr(job, "needs_both", False) and mode in ("auto", "cross"):
        mode = "forward"  # every G made (each text's own pass mode still chosen per text by engine.plan)
    pairs = plan_pairs(items, ids, job.out_dim, mode)
    return JobPlan(texts, ids, items, pairs, cache_keys, (time.perf_counter() - t_start) / max(1, len(ids)))


#: texts after the one whose G is due that packing looks at for packmates (`_Attributions.pack_for`)
PACK_LOOKAHEAD = 256
#: a pack's padded work (slots x rows x longest length) may be at most this multiple of its texts' own work
PACK_WASTE = 1.25


class _Attributions:
    """The G's of the materialised texts: made at first use (or read from the cache, and put there when made),
    each reported in full once and as `reused` after, dropped with the text's side after its last pair.

    A short text's G is made together with those of the next texts due (`pack_for`: same packing key, within a
    launch and little padding) in shared launches (`job.packed_attributions`). What making a G took (its share of
    a pack) is charged to the first pair that uses it (`settle`), wherever it was made."""

    def __init__(self, job: PairJob, p: JobPlan, sides: "Sides", cache: Optional[GCache]):
        self.job, self.p, self.sides, self.cache = job, p, sides, cache
        self.G, self.plans, self.reported = {}, {}, set()
        self.remaining = [0] * len(p.items)
        for i, j in p.ids:
            self.remaining[i] += 1
            self.remaining[j] += 1
        due = []  # the texts whose G is made, in order of first use
        for q, (i, j) in enumerate(p.ids):
            due += [i, j] if p.pairs.how[q] == "both" else [p.known_and_other(q)[0]]
        self.due = list(dict.fromkeys(due))
        self.position = {t: k for k, t in enumerate(self.due)}
        self.packing = {}  # text -> job.packing(side) (None: runs alone)
        self.cost = {}  # text -> seconds its G took (its share of a pack), until a pair is charged with them
        self.making = 0.0  # seconds spent making G's so far (callers subtract what fell in their own window)

    def __call__(self, t: int):
        if t in self.G:
            return self.G[t]
        t0 = time.perf_counter()
        if self.p.items[t].cached and self.p.cache_keys[t] in self.cache:  # (the job's own puts may evict it)
            self.G[t], plan_t = self.cache.get(self.p.cache_keys[t])
            self.plans[t] = dict(plan_t, cached=True)
        else:
            group = self.pack_for(t)
            if len(group) > 1:
                with named("attribution_packed"):
                    made = self.job.packed_attributions([self.sides[s] for s in group])
                if made is None:  # out of memory or not finite together: these texts run alone from now on
                    for s in group:
                        self.packing[s] = None
                else:
                    share = (time.perf_counter() - t0) / len(group)
                    for s, (G, plan_s) in zip(group, made):
                        self._keep(s, G, plan_s)
                        self.cost[s] = share
            if t not in self.G:
                with named("attribution"):
                    self._keep(t, *self.job.attribution(self.sides[t]))
                self.cost[t] = time.perf_counter() - t0  # a failed pack's time included
        self.making += time.perf_counter() - t0
        return self.G[t]

    def _keep(self, t: int, G, plan_t: dict):
        self.G[t], self.plans[t] = G, plan_t
        if self.cache is not None:
            self.cache.put(self.p.cache_keys[t], (G, plan_t))

    def _packing(self, t: int):
        if t not in self.packing:
            self.packing[t] = getattr(self.job, "packing", lambda side: None)(self.sides[t])
        return self.packing[t]

    def pack_for(self, t: int) -> list:
        """t and the texts due after it whose passes join t's launches: the same packing key, all within one
        launch of the longest one's length, padded work at most PACK_WASTE times their own; [t] alone when t's
        passes fill a large part of a launch themselves (`PathJob.packing`: None)."""
        info = self._packing(t)
        if info is None:
            return [t]
        key, slots, rows, longest = info
        own = slots * rows * longest
        group = [t]
        start = self.position.get(t, -1) + 1
        for s in self.due[start:start + PACK_LOOKAHEAD]:
            if s in self.G or self.p.items[s].cached:
                continue
            other = self._packing(s)
            if other is None or other[0] != key:
                continue
            _, u, n, S = other
            slots_, rows_, longest_ = max(slots, u), rows + n, max(longest, S)
            if slots_ * rows_ > self.job.launch_capacity(self.sides[t], longest_):
                continue
            if slots_ * rows_ * longest_ > PACK_WASTE * (own + u * n * S):
                continue
            group.append(s)
            slots, rows, longest, own = slots_, rows_, longest_, own + u * n * S
        return group

    def settle(self, pair: tuple) -> float:
        """The seconds the G's of this pair's texts took, charged once (to the first pair that uses each)."""
        return sum(self.cost.pop(t, 0.0) for t in set(pair))

    def plan_of(self, t: int, cross_plan: Optional[dict]):
        """The plan reported for text t in a pair: its G's (the first time in full, then `reused`), or the pair's
        cross run's when its G was never made."""
        if t not in self.G:
            return cross_plan
        reused = t in self.reported
        self.reported.add(t)
        return dict(self.plans[t], reused=True) if reused else self.plans[t]

    def done(self, pair: tuple):
        for t in pair:
            self.remaining[t] -= 1
            if self.remaining[t] == 0:
                self.G.pop(t, None)
                self.sides.drop(t)
                release = getattr(self.job, "release", None)  # what the job holds for the text (IJ: float64 side)
                if release is not None:
                    release(*self.sides.keys[t])


class _CrossRuns:
    """The A's of the pairs made by cross passes: the first such pair on a text runs one reverse-mode pass over it
    for every later pair crossing on the same text (all their known G's as cotangents), its time shared out."""

    def __init__(self, job: PairJob, p: JobPlan, sides: "Sides", made: _Attributions):
        self.job, self.p, self.sides, self.made, self.done = job, p, sides, made, {}
        self.by_other = {}  # text -> the pairs that get A by cross passes on it, in order
        for q, how in enumerate(p.pairs.how):
            if how != "both":
                self.by_other.setdefault(p.known_and_other(q)[1], []).append(q)

    def __call__(self, k: int) -> tuple:
        """(A [U_a, U_b], the first-order terms of the side not materialised ({"a"|"b": m}), the run's plan, this
        pair's share of the run's seconds)."""
        if k not in self.done:
            other = self.p.known_and_other(k)[1]
            group = [q for q in self.by_other[other] if q >= k and q not in self.done]
            knowns = list(dict.fromkeys(self.p.known_and_other(q)[0] for q in group))
            Gs = [self.made(t) for t in knowns]  # their time is charged by `made.settle`, not shared here
            t0 = time.perf_counter()
            refs = [self.job.reference_embedding(self.sides[t]) for t in knowns]
            Ms, firsts, run_plan = _cross_run(self.job, Gs, self.sides[other], refs)
            share = (time.perf_counter() - t0) / len(group)
            M_of, first_of = dict(zip(knowns, Ms)), dict(zip(knowns, firsts))
            run_plan = dict(run_plan, pairs_in_run=len(group))
            for q in group:
                known = self.p.known_and_other(q)[0]
                self.done[q] = (M_of[known], first_of[known], run_plan, share)
        M, first, run_plan, share = self.done.pop(k)
        if self.p.pairs.how[k] == "cross-a":  # a known: M = G_aᵀ G_b, the run gave b's first-order terms
            return M, {"b": first}, run_plan, share
        return M.T, {"a": first}, run_plan, share


def execute(job: PairJob, p: JobPlan, sides: "Sides", cache: Optional[GCache], zt) -> Iterator:
    """The explanations of the planned pairs, in order; the caller's code between pairs runs with the job's
    process-wide changes paused (`runtime.paused(zt)`)."""
    made = _Attributions(job, p, sides, cache)
    crossed = _CrossRuns(job, p, sides, made)
    for k, ((i, j), how) in enumerate(zip(p.ids, p.pairs.how)):
        t0, m0 = time.perf_counter(), made.making
        if how == "both":
            A, known, cross_plan, share = job.combine(sides[i], sides[j], made(i), made(j)), {}, None, 0.0
        else:
            A, known, cross_plan, share = crossed(k)
            t0, m0 = time.perf_counter(), made.making
        plans = [made.plan_of(t, cross_plan) for t in (i, j)]
        first = job.first_order(sides[i], sides[j], made.G.get(i), made.G.get(j), known)
        # this pair's own time, its share of a cross run, and its texts' G's (charged once, wherever made)
        seconds = time.perf_counter() - t0 - (made.making - m0) + share + made.settle((i, j))
        e = job.explanation(sides[i], sides[j], A, made.G.get(i), made.G.get(j), plans, seconds + p.setup_seconds,
                            first)
        if len(p.ids) > 1:
            e.extras["job"] = dict(p.pairs.as_dict(), pairs=len(p.ids), texts=len(p.items), how=how)
        with runtime.paused(zt):
            yield e
        made.done((i, j))


def run(job: PairJob, texts_a: Sequence[str], texts_b: Sequence[str], all_pairs: bool = False,
        side_bytes: int = SIDE_CACHE_BYTES, cache: Optional[GCache] = None) -> Iterator:
    """Explanations of the pairs (texts_a[k], texts_b[k]) — or of every (a, b) when all_pairs — in order: the
    distinct texts, then the plan (`plan`), then its execution (`execute`), inside the job's runtime context.
    side_bytes: how much of the prepared texts to keep (`Sides`); cache: G's kept across jobs (used and filled)."""
    texts_a, texts_b = list(texts_a), list(texts_b)
    pairs = pair_indices(len(texts_a), len(texts_b), all_pairs)
    if not pairs:
        return
    t_start = time.perf_counter()
    with runtime.computation(job) as zt:  # everything process-wide this job changes (simattr/runtime.py)
        texts, ids = distinct_texts(job, texts_a, texts_b, pairs)
        sides = Sides(job, texts, side_bytes)
        yield from execute(job, plan(job, sides, texts, ids, cache, t_start), sides, cache, zt)


def _cross_run(job: PairJob, Gs: list, other, refs: list = None):
    """job.cross on the columns of the known G's that are not zero (units with no tangent, e.g. [CLS]/[SEP] under
    the pad reference, have zero columns and so zero rows of M: no pass for them); zero rows put back. refs: per
    known G, f(r) of its text (or None): one more cotangent each, whose row is the other text's first-order terms
    against that reference (G_otherᵀ f(r_known)). Returns (Ms, the other text's first-order terms per G, plan)."""
    refs = list(refs) if refs is not None else [None] * len(Gs)
    live = [(G != 0).any(0) for G in Gs]
    n_other = len(other.units)
    cols = [torch.cat([G[:, m]] + ([r.reshape(-1, 1).to(G.dtype)] if r is not None else []), 1)
            for G, m, r in zip(Gs, live, refs)]
    if not any(c.shape[1] for c in cols):
        return [G.new_zeros(G.shape[1], n_other, dtype=torch.float64) for G in Gs], [None] * len(Gs), \
            {"mode": "none", "reason": "the known sides have no active units: A = 0 without a pass"}
    with named("cross_run"):
        Ms, plan = job.cross([c for c in cols if c.shape[1]], other)
    Ms, out, firsts = iter(Ms), [], []
    for G, m, r, c in zip(Gs, live, refs, cols):
        full = G.new_zeros(G.shape[1], n_other, dtype=torch.float64)
        first = None
        if c.shape[1]:
            M = next(Ms).to(full.dtype)
            if r is not None:
                M, first = M[:-1], M[-1]
            full[m] = M
        out.append(full)
        firsts.append(first)
    return out, firsts, plan


def explain_one(job: PairJob, text_a: str, text_b: str, cache: Optional[GCache] = None):
    """The explanation of one pair (the job's context is closed before it returns)."""
    with contextlib.closing(run(job, [text_a], [text_b], cache=cache)) as it:
        return next(it)
