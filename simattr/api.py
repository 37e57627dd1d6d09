"""Public API: `explain(a, b, model=None, method="ij", **options)` and `Explainer`, which keeps models loaded."""
from __future__ import annotations

from typing import Iterator

from . import jobs
from .encoders import Encoder, load_encoder
from .encoders.loading import has_router, side_encoder
from .errors import SimattrError
from .explanation import Explanation
from .methods import BATCH_METHODS, METHODS, OPTIONS, PAIR_JOBS
from .methods._setbased import as_list

def resolve_options(method: str, options: dict, soft: dict = None) -> dict:
    """The options `method` runs with: its table (`simattr.options`, declared in the method's module) validates
    every explicit option (unknown names and bad values are SimattrErrors naming them); `soft` options (an
    Explainer's defaults, a front end's) apply where the method has them."""
    if not isinstance(method, str):
        raise SimattrError(f"method must be a string, one of {', '.join(sorted(METHODS))}; got {method!r}")
    if method not in METHODS:
        raise SimattrError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    return dict(OPTIONS[method].resolve(options, soft))


class Explainer:
    """Keeps one encoder (or a query and a document encoder) loaded across many explanations.

    model: None (bundled all-MiniLM-L6-v2), a path, a SentenceTransformer / HF model object, or an Encoder;
    model_b: optional second tower for text b (asymmetric query/document encoders);
    cache_size: how many texts' G (ij, bilrp) to keep across calls — a text explained again (a query against one
    document after another) then costs no pass of its own; 0 (default) keeps none. Keys are values only (the model's
    weights fingerprint, reference tensors' contents, spans; a callable reference or units is never cached), so
    changed weights or tensors are never served stale; `clear_cache()` frees the memory and covers the changes a key
    cannot see (see `jobs.GCache`). Options that only change *how* G is computed (mode, attention, contraction,
    memory) are not part of the key.

    What each side's tower does with a text, as sentence-transformers' encode / encode_query / encode_document do it
    (each a string for both sides, or a pair (a, b)): task ("query" / "document": a Router's route or a
    multi-vector model's query / document encoding, and that task's prompt; such a model runs text a as the query
    and text b as the document unless told),
    prompt (a text put before the text), prompt_name (one of the model's prompts); without these the model's
    default_prompt_name applies. The prompt's tokens are context, held fixed and left out of the result, unless
    include_prompt=True (then they are explained like the text's, and marked in `extras["prompt"]`).
    """

    def __init__(self, model=None, model_b=None, *, pooling=None, tokenizer=None, device=None, dtype=None,
                 max_length=None, truncate_dim=None, task=None, prompt=None, prompt_name=None,
                 include_prompt: bool = False, cache_size: int = 0, **defaults):
        if isinstance(model, (tuple, list)) and len(model) == 2 and model_b is None:
            model, model_b = model
        kw = dict(pooling=pooling, tokenizer=tokenizer, device=device, dtype=dtype, max_length=max_length,
                  truncate_dim=truncate_dim)
        base_a = load_encoder(model, **kw)
        base_b = base_a if model_b is None else load_encoder(model_b, **kw)
        tasks = tuple(t if t is not None or not _routed(base) else default  # a Router's / multi-vector towers
                      for t, base, default in zip(_per_side(task, "task"), (base_a, base_b), ("query", "document")))
        prompts, names = _per_side(prompt, "prompt"), _per_side(prompt_name, "prompt_name")
        self.encoder_a: Encoder = side_encoder(base_a, tasks[0], prompts[0], names[0], include_prompt)
        if base_b is base_a and (tasks[0], prompts[0], names[0]) == (tasks[1], prompts[1], names[1]):
            self.encoder_b = self.encoder_a  # one tower: a text's G serves both sides
        else:
            self.encoder_b: Encoder = side_encoder(base_b, tasks[1], prompts[1], names[1], include_prompt)
        self.defaults = dict(defaults)
        if "method" in self.defaults:
            resolve_options(self.defaults["method"], {})
        for name, value in self.defaults.items():
            if name == "method":
                continue
            takers = [m for m, table in OPTIONS.items() if name in table]
            if not takers:
                raise SimattrError(f"Explainer default {name!r} is an option of no method; the methods' options: "
                                   f"{', '.join(sorted({o.name for t in OPTIONS.values() for o in t}))}")
            for m in takers:  # a default is checked now, by every method that takes it
                OPTIONS[m].resolve({name: value})
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 0:
            raise SimattrError(f"cache_size must be a non-negative integer, got {cache_size!r}")
        self.cache = jobs.GCache(cache_size) if cache_size else None

    def clear_cache(self):
        """Forget the kept G's: to free their memory, or after a change to the model the cache's keys cannot see.

        Kept G's are keyed by values (`simattr.jobs.GCache`): a change to the weights made through PyTorch
        (`load_state_dict`, an optimizer step, `p.add_()` under no_grad, a new `p.data`) or to a reference tensor is
        noticed without this, and a reference or units given as a function is never cached. Call it after writes
        into the weights that PyTorch does not track (`p.data.add_()`, `p.data.copy_()`, through
        `p.detach().numpy()`), after changes that are not in the model's tensors (config values, a module's `eps`,
        hooks), or inside a CallableEncoder's functions, a head that is a plain function, or the tokenizer."""
        if self.cache is not None:
            self.cache.clear()

    def check_options(self, method: str, options: dict, soft_options: dict = None) -> dict:
        """The options `method` would run with here (the Explainer's defaults applied); SimattrError naming a bad
        one."""
        soft = {k: v for k, v in self.defaults.items() if k != "method"}
        soft.update(soft_options or {})
        return resolve_options(method, options, soft)

    def explain(self, a, b, method: str = None, *, soft_options: dict = None, **options) -> Explanation:
        """Explain a and b with `method`. `soft_options`: defaults applied only if the method takes them (the CLI
        passes its defaults this way); an explicit option the method does not take raises SimattrError."""
        opts = dict(options)
        given = opts.pop("method", None) if method is None else method
        opts.pop("method", None)
        method = self.defaults.get("method", "ij") if given is None else given
        opts = self.check_options(method, opts, soft_options)
        for name, text in (("a", a), ("b", b)):
            if not isinstance(text, str):
                raise SimattrError(f"text {name} must be a string, got {type(text).__name__}")
            as_list(text, name)
        if method in PAIR_JOBS:
            return jobs.explain_one(PAIR_JOBS[method](self.encoder_a, self.encoder_b, **opts), a, b, self.cache)
        return BATCH_METHODS[method](self.encoder_a, self.encoder_b, [a], [b], **opts)[0]

    def iter_many(self, a, b, method: str = None, *, all_pairs: bool = False, soft_options: dict = None,
                  **options) -> Iterator[Explanation]:
        """`explain_many` as a stream, in order (all_pairs: row by row): ij and bilrp yield each pair as soon as it is
        done (`simattr.jobs.run`; exhaust or close the iterator to restore the model), the batched methods after
        their batch. Options are checked before the first pair."""
        method = self.defaults.get("method", "ij") if method is None else method
        opts = self.check_options(method, options, soft_options)
        a, b = _ordered(a, "a"), _ordered(b, "b")
        if _no_texts(a) or _no_texts(b):  # an empty batch (a filter left nothing): no pairs
            return (e for e in ())
        a_list, b_list = as_list(a, "a"), as_list(b, "b")
        if not all_pairs and len(a_list) != len(b_list) and 1 not in (len(a_list), len(b_list)):
            raise SimattrError(f"{len(a_list)} texts a and {len(b_list)} texts b: give equal numbers, one text "
                               f"on a side, or all_pairs=True")
        if method in PAIR_JOBS:
            return jobs.run(PAIR_JOBS[method](self.encoder_a, self.encoder_b, **opts), a_list, b_list, all_pairs,
                            cache=self.cache)
        if all_pairs:  # batch methods take aligned lists: spell the grid out
            a_list, b_list = [t for t in a_list for _ in b_list], b_list * len(a_list)
        results = BATCH_METHODS[method](self.encoder_a, self.encoder_b, a_list, b_list, **opts)
        return (e for e in results)  # a generator (closable) like the path methods' stream

    def explain_many(self, a, b, method: str = None, *, all_pairs: bool = False, soft_options: dict = None,
                     show_progress_bar: bool = False, **options) -> list:
        """Explanations of many pairs: a and b lists of equal length, or one text on a side against a list on the
        other (one query against many documents); all_pairs=True: every text of a with every text of b, returned
        as a list of rows (len(a) lists of len(b) explanations). method: as in `explain` (default: the
        Explainer's `method` default, else "ij").

        maxsim, bertscore and ot embed all texts in batches; ij and bilrp compute each distinct text's G at most
        once and plan per pair whether A comes from two known G's or from cross passes (`simattr.jobs`).
        show_progress_bar: a tqdm bar over the pairs on stderr (as sentence-transformers' encode has it)."""
        a, b = _ordered(a, "a"), _ordered(b, "b")  # generators read once
        stream = self.iter_many(a, b, method, all_pairs=all_pairs, soft_options=soft_options, **options)
        if show_progress_bar:
            from tqdm import tqdm
            n_a, n_b = (1 if isinstance(t, str) else len(t) for t in (a, b))
            stream = tqdm(stream, total=n_a * n_b if all_pairs else max(n_a, n_b), unit="pair")
        out = list(stream)
        if all_pairs and _no_texts(b):
            out = [[] for _ in ([] if _no_texts(a) else as_list(a, "a"))]
        elif all_pairs and not _no_texts(a):
            nb = len(as_list(b, "b"))
            out = [out[k:k + nb] for k in range(0, len(out), nb)]
        return out

    def rank(self, query: str, documents, top_k: int = 10, explain: bool = True, method: str = None, **options):
        """`documents` ranked by the model's similarity to `query`, the top `top_k` explained in one job (the
        query's G made once): a `simattr.ranking.Ranking`."""
        from .ranking import rank
        method = self.defaults.get("method", "ij") if method is None else method
        return rank(self, query, documents, top_k=top_k, explain=explain, method=method, **options)

    def contrast(self, query: str, doc_1: str, doc_2: str, method: str = None, **options) -> Explanation:
        """Why `doc_1` and not `doc_2` for `query`: s(q, d1) − s(q, d2) as one Explanation (`simattr.ranking`)."""
        from .ranking import contrast
        method = self.defaults.get("method", "ij") if method is None else method
        return contrast(self, query, doc_1, doc_2, method=method, **options)

    def compare(self, a: str, b: str, methods=None, faithfulness: bool = True, **options):
        """(a, b) explained by several methods (default ij, bilrp, maxsim, ot): matrices, rank correlations and
        faithfulness by occlusion side by side (`simattr.compare.Comparison`)."""
        from .compare import DEFAULT_METHODS, compare
        return compare(self, a, b, methods=methods or DEFAULT_METHODS, faithfulness=faithfulness, **options)

    def explain_batch(self, batch, method: str = None, *, columns: dict = None, **options):
        """One result row per input row, never raising for a pair (`simattr.batch.explain_batch`): `batch` has
        columns id, a, b (a dict of lists, a pandas DataFrame, a pyarrow Table or a datasets.Dataset; `columns`
        maps other names, e.g. {"id": "qid", "a": "query", "b": "passage"}; without an id column the id is the row
        number); returns a pyarrow Table of `simattr.results.schema` — a pair that cannot be explained is a row
        with status "error" and its reason. A bad option is a SimattrError, before any pair."""
        _require_pyarrow()
        from .batch import explain_batch
        return explain_batch(self, batch, method, columns=columns, **options)


def _per_side(value, name: str) -> tuple:
    """(a, b) of a per-side setting: one value for both sides, or a pair."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise SimattrError(f"{name} takes one value or a pair (a, b), got {len(value)} values")
        return tuple(value)
    return value, value


def _routed(enc) -> bool:
    """A model whose query and document towers differ: a Router's routes, a multi-vector model's tasks."""
    source = getattr(enc, "source", None)
    return getattr(enc, "multi_vector", False) or (source is not None and has_router(source))


def _require_pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise SimattrError("explain_batch returns a pyarrow Table: pip install 'simattr[data]' (pyarrow)") from None


def _ordered(texts, side: str):
    """One text, or the texts as a list (a generator read once); unordered collections are refused."""
    if isinstance(texts, str):
        return texts
    if isinstance(texts, (set, frozenset, dict, bytes, bytearray)) or not hasattr(texts, "__iter__"):
        return as_list(texts, side)  # refused there, with the reason
    texts = list(texts)
    return as_list(texts, side) if texts else []


def _no_texts(texts) -> bool:
    """An empty list (or other empty collection) of texts, as opposed to one text or a non-empty list."""
    return not isinstance(texts, str) and hasattr(texts, "__len__") and len(texts) == 0


def explain(a, b, model=None, method: str = "ij", **options) -> Explanation:
    """Explain the similarity of texts a and b: a token-by-token matrix whose sum decomposes the similarity."""
    load_keys = ("model_b", "pooling", "tokenizer", "device", "dtype", "max_length", "truncate_dim", "task", "prompt",
                 "prompt_name", "include_prompt")
    load = {k: options.pop(k) for k in load_keys if k in options}
    return Explainer(model, **load).explain(a, b, method=method, **options)
