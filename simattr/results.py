"""One schema for explanations as rows, the same in Parquet, JSON lines and memory: what `explain_batch` returns
and `simattr explain-many` writes, readable by pandas, polars, pyarrow and Hugging Face `datasets` as they are.

Per row (`FIELDS`):

| column | type | |
| --- | --- | --- |
| `id` | as given (int64 or string) | the input row's id (its row number when the input has none) |
| `status` | string | `"ok"`, or `"error"` (the pair could not be explained; `reason` says why) |
| `reason` | string, null | why the row is an error row |
| `method` | string | ij, bilrp, maxsim, bertscore or ot |
| `score` | float64, null | the model's similarity of a and b (the method's score for the set-based methods) |
| `error` | float64, null | completeness (IJ) / conservation (BiLRP) error, null where the method has none |
| `total` | float64, null | Σ A |
| `tokens_a`, `tokens_b` | list<string> | the attribution units of each text |
| `matrix` | list<list<float32>> | A, ragged (len(tokens_a) rows of len(tokens_b)) |
| `details` | string (JSON) | terms, settings and the method's extras (scores, alignment, plans, timings) |
| `settings_hash` | string | the job's settings digest (`simattr.outputs.settings_hash`) |

The full settings and model description go in a Parquet file's metadata (`METADATA_KEY`). `Explanation.from_row`
reads a row back.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np

from .explanation import Explanation, plain

FIELDS = ("id", "status", "reason", "method", "score", "error", "total", "tokens_a", "tokens_b", "matrix",
          "details", "settings_hash")
#: the key of the job's settings (JSON) in a Parquet file's schema metadata
METADATA_KEY = b"simattr"


def ok_row(id_, e: Explanation, settings_hash: Optional[str] = None) -> dict:
    """The row of an explained pair."""
    details = {"terms": e.terms, "settings": e.settings, "extras": e.extras}
    return {"id": id_, "status": "ok", "reason": None, "method": e.method, "score": float(e.score),
            "error": None if e.error is None else float(e.error), "total": e.total,
            "tokens_a": [str(t) for t in e.tokens_a], "tokens_b": [str(t) for t in e.tokens_b],
            "matrix": np.asarray(e.matrix, dtype=np.float32).tolist(),
            "details": json.dumps(plain(details)), "settings_hash": settings_hash}


def error_row(id_, method: str, reason: str, settings_hash: Optional[str] = None) -> dict:
    """The row of a pair that could not be explained."""
    return {"id": id_, "status": "error", "reason": str(reason), "method": method, "score": None, "error": None,
            "total": None, "tokens_a": None, "tokens_b": None, "matrix": None, "details": None,
            "settings_hash": settings_hash}


def schema(id_type=None):
    """The pyarrow schema of the rows (id: the given type, else inferred from the ids)."""
    import pyarrow as pa
    return pa.schema([
        ("id", id_type or pa.int64()), ("status", pa.string()), ("reason", pa.string()), ("method", pa.string()),
        ("score", pa.float64()), ("error", pa.float64()), ("total", pa.float64()),
        ("tokens_a", pa.list_(pa.string())), ("tokens_b", pa.list_(pa.string())),
        ("matrix", pa.list_(pa.list_(pa.float32()))), ("details", pa.string()), ("settings_hash", pa.string()),
    ])


def id_type(ids: list):
    """int64 when every id is an integer, else string (ids are then written as strings)."""
    import pyarrow as pa
    return pa.int64() if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids) \
        else pa.string()


def to_table(rows: list, metadata: Optional[dict] = None, id_kind=None):
    """The rows as a pyarrow Table of `schema`, with the job's settings in its metadata."""
    import pyarrow as pa
    kind = id_kind or id_type([r["id"] for r in rows])
    if kind == pa.string():
        rows = [dict(r, id=str(r["id"])) for r in rows]
    s = schema(kind)
    if metadata is not None:
        s = s.with_metadata({METADATA_KEY: json.dumps(plain(metadata)).encode("utf-8")})
    columns = {name: [r[name] for r in rows] for name in FIELDS}
    return pa.Table.from_pydict(columns, schema=s)


def table_metadata(table) -> dict:
    """The job's settings stored with a table or a Parquet file's schema ({} if none)."""
    meta = (table.schema.metadata or {}) if hasattr(table, "schema") else (table.metadata or {})
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def from_row(row) -> Explanation:
    """`Explanation.from_row`: an Explanation from one result row."""
    return Explanation.from_row(row)


def read_rows(path: str) -> list:
    """The rows of a saved result: an explain-many output (a .jsonl file, a .parquet file or a folder of parts) or
    a JSON explanation (one object, possibly over several lines); a SimattrError naming what is wrong otherwise."""
    import os

    from .errors import SimattrError
    from .inputs import read_lines, read_parquet_files
    if os.path.isdir(path) or path.lower().endswith(".parquet"):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet")) \
            if os.path.isdir(path) else [path]
        if not files:
            raise SimattrError(f"{path!r} holds no .parquet files")
        rows = read_parquet_files(files).to_pylist()
    else:
        lines = [ln for ln in read_lines(path) if ln.strip()]
        try:
            rows = [json.loads(ln) for ln in lines]  # JSON lines (one line: a JSON explanation)
        except ValueError:
            try:
                rows = [json.loads("\n".join(lines))]  # one JSON object over several lines
            except ValueError:
                raise SimattrError(f"{path!r} is neither a JSON explanation nor JSON lines of results") from None
    if not rows:
        raise SimattrError(f"{path!r} holds no explanation")
    return rows
