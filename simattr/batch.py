"""`explain_batch`: a batch of pairs (columns id, a, b) in, one result row per input row out, never raising for a
pair. The one path for one pair and for a million: the command line's `explain-many`, the Ray Data integration
and torchrun ranks all call it, and it runs the pairs through the job runner (`Explainer.iter_many`, so texts
shared by several pairs get their G once).

A pair that cannot be explained — a text that is not a string, empty, without an explainable token or over the
maximum length without `truncate`; NaN or Inf in its computation; out of memory with the smallest chunks — becomes
a row with status "error" and the reason; the others are explained as usual. A bad *option* is still a
SimattrError, raised before any pair: it is a mistake of the whole batch.
"""
from __future__ import annotations

import warnings
from typing import Optional

from . import results
from .errors import SimattrError

#: the columns a batch is read from, by default (`columns` maps them to other names)
COLUMNS = {"id": "id", "a": "a", "b": "b"}


def columns_of(batch, columns: Optional[dict] = None, first_id: int = 0) -> tuple:
    """(ids, texts a, texts b) of a batch: a dict of lists, a pandas DataFrame, a pyarrow Table or RecordBatch, or a
    Hugging Face `datasets.Dataset`; `columns` maps "id", "a", "b" to the batch's column names (no id column:
    the row numbers, from `first_id`)."""
    names = dict(COLUMNS, **(columns or {}))
    unknown = set(names) - set(COLUMNS)
    if unknown:
        raise SimattrError(f"columns maps id, a and b; not {', '.join(sorted(unknown))}")
    data = _as_dict(batch)
    for key in ("a", "b"):
        if names[key] not in data:
            raise SimattrError(f"the batch has no column {names[key]!r} for text {key} (its columns: "
                               f"{', '.join(map(str, data)) or 'none'}); map it with columns={{{key!r}: ...}}")
    a, b = list(data[names["a"]]), list(data[names["b"]])
    if len(a) != len(b):
        raise SimattrError(f"columns {names['a']!r} and {names['b']!r} have {len(a)} and {len(b)} rows")
    if names["id"] in data:
        ids = [_plain_id(i) for i in data[names["id"]]]
        if len(ids) != len(a):
            raise SimattrError(f"column {names['id']!r} has {len(ids)} rows, the texts {len(a)}")
    elif "id" in (columns or {}):
        raise SimattrError(f"the batch has no id column {names['id']!r}")
    else:
        ids = list(range(first_id, first_id + len(a)))
    return ids, a, b


def _as_dict(batch) -> dict:
    if isinstance(batch, dict):
        return batch
    if hasattr(batch, "to_pydict"):  # pyarrow Table / RecordBatch
        return batch.to_pydict()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas DataFrame
        return {c: batch[c].tolist() for c in batch.columns}
    if hasattr(batch, "column_names") and hasattr(batch, "__getitem__"):  # datasets.Dataset
        return {c: batch[c] for c in batch.column_names}
    raise SimattrError(f"a batch is a dict of columns, a pandas DataFrame, a pyarrow Table or a datasets.Dataset; "
                       f"got {type(batch).__name__}")


def _plain_id(i):
    return i.item() if hasattr(i, "item") else i


def _text_problem(text, encoder, truncate: bool) -> Optional[str]:
    """Why a text cannot be explained (None: it can), found by tokenizing it as the job would."""
    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder.tokenize(text, truncate=truncate)
    except SimattrError as exc:
        return str(exc)
    return None


def explain_batch(explainer, batch, method: Optional[str] = None, *, columns: Optional[dict] = None,
                  settings_hash: Optional[str] = None, metadata: Optional[dict] = None, first_id: int = 0,
                  **options):
    """One result row per input row (`simattr.results`), as a pyarrow Table in input order; see the module."""
    method = explainer.defaults.get("method", "ij") if method is None else method
    explainer.check_options(method, options)  # a bad option: the whole batch's mistake, raised now
    ids, texts_a, texts_b = columns_of(batch, columns, first_id)
    rows = explain_rows(explainer, ids, texts_a, texts_b, method, settings_hash, **options)
    return results.to_table(rows, metadata)


def explain_rows(explainer, ids: list, texts_a: list, texts_b: list, method: str,
                 settings_hash: Optional[str] = None, after=None, **options) -> list:
    """The rows of `explain_batch` as dicts, in input order. after(e, a, b): called on each Explanation before its
    row is made (e.g. a faithfulness check that adds to its extras); its failure is that pair's error row."""
    truncate = bool(options.get("truncate", explainer.defaults.get("truncate", False)))
    problems = {}  # (tower, text) -> reason, each distinct text checked once

    def problem(tower: int, t):
        key = (tower, t if isinstance(t, str) else id(t))
        if key not in problems:
            problems[key] = _text_problem(t, (explainer.encoder_a, explainer.encoder_b)[tower], truncate)
        return problems[key]
    rows = [None] * len(ids)
    good = []
    for k, (a, b) in enumerate(zip(texts_a, texts_b)):
        why = [f"text {side}: {reason}" for side, tower, t in (("a", 0, a), ("b", 1, b))
               if (reason := problem(tower, t))]
        if why:
            rows[k] = results.error_row(ids[k], method, "; ".join(why), settings_hash)
        else:
            good.append(k)
    done = 0
    if good:
        stream = None
        try:  # the batched methods compute when called, the path methods as the stream is read
            stream = explainer.iter_many([texts_a[k] for k in good], [texts_b[k] for k in good], method, **options)
            for e in stream:
                k = good[done]
                rows[k] = _row(ids[k], e, texts_a[k], texts_b[k], method, settings_hash, after)
                done += 1
        except Exception:  # noqa: BLE001  (a pair failed inside the shared job: the rest pair by pair, below)
            pass
        finally:
            if stream is not None:
                stream.close()
    for k in good[done:]:  # after a failure inside the job: each remaining pair alone, its failure its own row
        try:
            e = explainer.explain(texts_a[k], texts_b[k], method, **options)
            rows[k] = _row(ids[k], e, texts_a[k], texts_b[k], method, settings_hash, after)
        except Exception as exc:  # noqa: BLE001  (a pair's failure, whatever it is, is that pair's row)
            rows[k] = results.error_row(ids[k], method, _reason(exc), settings_hash)
    return rows


def _row(id_, e, a, b, method, settings_hash, after) -> dict:
    if after is not None:
        try:
            after(e, a, b)
        except Exception as exc:  # noqa: BLE001
            return results.error_row(id_, method, _reason(exc), settings_hash)
    return results.ok_row(id_, e, settings_hash)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SimattrError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
