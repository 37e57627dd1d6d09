"""Options several methods share, declared once (`simattr.options`): the path methods' (ij, bilrp) and the
set-based methods' (maxsim, bertscore, ot). Each method's table in its module lists these with its own."""
from __future__ import annotations

from .. import contraction, engine
from ..options import Cli, Option, boolean, integer, one_of

ATTENTION_CHOICES = ("auto", "fused", "eager")  # simattr.attention.CHOICES (not imported: it loads the kernels)


def _units(v):
    """"token", "word", or a list of token spans (each span a list of token positions or a (start, stop) pair)."""
    if isinstance(v, str):
        if v not in ("token", "word"):
            raise ValueError("choose 'token', 'word' or a list of token spans")
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(s, (list, tuple, range)) for s in v):
        return v
    raise ValueError("choose 'token', 'word' or a list of token spans (for a value per text: PerSide(a, b))")


_units.choices = ("token", "word")


def _memory(v):
    """A positive finite byte count or a string like '4GB' (engine.parse_memory); None: the device's share."""
    try:
        engine.parse_memory(v)
    except ValueError:
        raise ValueError("must be a positive byte count or a string like '4GB'") from None
    return v


def _dims(v):
    """None, a slice, a list / range of dimension indices, or a dict {aspect name: slice or index list}."""
    def one(x):
        if isinstance(x, slice) or isinstance(x, range):
            return True
        return isinstance(x, (list, tuple)) and len(x) > 0 and all(
            hasattr(i, "__index__") and not isinstance(i, bool) for i in x)
    if v is None or one(v):
        return v
    if isinstance(v, dict) and v and all(isinstance(k, str) and one(x) for k, x in v.items()):
        return v
    raise ValueError("a slice, a list of dimension indices, or a dict {aspect name: slice or list}")


def path_options() -> list:
    """What every path method (A = G_aᵀ G_b, G from passes along the path) takes besides its own."""
    return [
        Option("layer", 0, "attribute at the input of this block (0: the embedding module's output)",
               integer(0), in_key=True, cli=Cli(type=int)),
        Option("units", "token", "attribution units: 'token', 'word' (word pieces merged before the computation: "
               "fewer passes) or a list of token spans", _units, per_side=True, in_key=True,
               cli=Cli(choices=("token", "word"))),
        Option("sim", "auto", "similarity: 'cosine' (the L2 normalisation is part of f), 'dot', or 'auto' (the "
               "model's own: sentence-transformers' similarity_fn_name, cosine if it has none)",
               one_of("auto", "cosine", "dot"), in_key=True),
        Option("mode", "auto", "how G is computed: forward (one JVP per unit and node), reverse (one VJP per "
               "embedding dimension), cross (the other text's G as cotangents), auto (the cheapest)",
               one_of(*engine.PAIR_MODES)),
        Option("max_memory", None, "working-memory budget, e.g. '4GB' or bytes (default: a share of the device's)",
               _memory,
               doc_default="device share"),
        Option("internal_batch_size", None, "tangents x path nodes per chunk (default: the memory plan's)",
               integer(1, optional=True), cli=Cli(flag="--batch-size", type=int, dest="batch_size")),
        Option("pack", True, "short texts' forward-mode passes share launches (rows of one padded batch: one "
               "launch for many short texts); False: each text's passes alone, so its G does not depend on the "
               "other texts of the job even in the last bit", boolean, in_key=True,
               cli=Cli(flag="--no-pack", action="store_false", dest="pack",
                       help="run each text's passes alone (no shared launches)")),
        Option("truncate", False, "cut texts over the model's maximum length (with a warning) instead of an error",
               boolean, in_key=True, cli=Cli(action="store_true")),
        Option("attention", "auto", "attention: 'fused' (Triton kernel, one launch for all tangents), 'eager', or "
               "'auto' (fused on CUDA with Triton)", one_of(*ATTENTION_CHOICES)),
        Option("contraction", "auto", "reverse mode's Jacobian-contraction kernel (auto: where measured faster)",
               one_of(*contraction.BACKENDS)),
        Option("dims", None, "aspects of the embedding: a slice or list of dimensions (the whole explanation is then "
               "of the similarity restricted to them, A_S = G_a[S]ᵀ G_b[S]), or a dict of named groups (each "
               "group's matrix and share in extras['aspects'])", _dims, cli=None),
        Option("return_factors", False, "keep the per-dimension factors G_a, G_b on the result "
               "(Explanation.factors; not in its JSON)", boolean, cli=None),
    ]


def idf_weights(v):
    """None (uniform), True (idf over the other side's texts), a list of corpus texts, or a dict token -> weight."""
    if v is None or isinstance(v, bool) or isinstance(v, dict) or (
            isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v)):
        return v
    raise ValueError("None (uniform), True (idf over the references), a list of corpus texts or a dict of weights")


def set_options(aggregate: str) -> list:
    """What every set-based method (token embeddings of one layer, matched) takes besides its own."""
    return [
        Option("layer", None, "token embeddings after this many blocks", integer(0, optional=True),
               cli=Cli(type=int), doc_default="the last layer"),
        Option("truncate", False, "cut texts over the model's maximum length (with a warning) instead of an error",
               boolean, cli=Cli(action="store_true")),
        Option("units", "token", "'token', or 'word' (word pieces aggregated after matching)",
               one_of("token", "word")),
        Option("aggregate", aggregate, "subword-to-word aggregation with units='word'",
               one_of("sum", "mean", "max")),
        Option("batch_size", 64, "texts embedded per forward pass", integer(1), cli=None),
    ]
