"""Explanation methods. Each module says which f, which path and which units; the engine does the rest.

METHODS: name -> fn(enc_a, enc_b, text_a, text_b, **options) -> Explanation.
BATCH_METHODS: name -> fn(enc_a, enc_b, texts_a, texts_b, **options) -> [Explanation] (pairs batched at once).
PAIR_JOBS: name -> job class (enc_a, enc_b, **options) for `simattr.jobs.run`: the methods with A = G_aᵀ G_b, whose
jobs of many pairs make each distinct text's G at most once; METHODS[name].job is the same class.
OPTIONS: name -> the method's option table (`simattr.options.Options`, declared in its module).
"""
from . import bertscore, bilrp, ij, maxsim, ot
from .bertscore import explain_bertscore, explain_bertscore_many
from .bilrp import BiLRPJob, explain_bilrp
from .ij import IJJob, explain_ij
from .maxsim import explain_maxsim, explain_maxsim_many
from .ot import explain_ot, explain_ot_many

METHODS = {"ij": explain_ij, "bilrp": explain_bilrp, "maxsim": explain_maxsim, "bertscore": explain_bertscore,
           "ot": explain_ot}
BATCH_METHODS = {"maxsim": explain_maxsim_many, "bertscore": explain_bertscore_many, "ot": explain_ot_many}
PAIR_JOBS = {"ij": IJJob, "bilrp": BiLRPJob}
OPTIONS = {"ij": ij.OPTIONS, "bilrp": bilrp.OPTIONS, "maxsim": maxsim.OPTIONS, "bertscore": bertscore.OPTIONS,
           "ot": ot.OPTIONS}
