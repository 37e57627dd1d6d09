"""Pairs to explain, from the files and objects datasets come in: JSON lines, CSV / TSV, Parquet (a file or a
directory of them), a Hugging Face `datasets` dataset (a `Dataset`, or a directory saved with `save_to_disk`), or
two text files (line by line, or every text of one with every text of the other).

Every reader returns `Pairs` (ids, texts a, texts b). Column names are mapped with `columns` ({"id": "qid",
"a": "query", "b": "passage"}; the command line's `--columns id=qid,a=query,b=passage`); without an id column the
id is the row number. A file that cannot be read, is not UTF-8 or lacks a column is a SimattrError naming it.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Optional

from .errors import SimattrError

DEFAULT_COLUMNS = {"id": "id", "a": "a", "b": "b"}
#: JSON-lines keys also read as the texts (the earlier input format)
TEXT_ALIASES = {"a": ("text_a",), "b": ("text_b",)}


@dataclass
class Pairs:
    ids: list
    a: list
    b: list

    def __len__(self):
        return len(self.ids)


def parse_columns(spec: Optional[str]) -> dict:
    """'id=qid,a=query,b=passage' -> {"id": "qid", "a": "query", "b": "passage"}."""
    if spec is None:
        return {}
    out = {}
    for part in spec.split(","):
        key, sep, name = part.partition("=")
        key, name = key.strip(), name.strip()
        if not sep or key not in DEFAULT_COLUMNS or not name:
            raise SimattrError(f"--columns takes id=NAME,a=NAME,b=NAME (any of them), not {spec!r}")
        if key in out:
            raise SimattrError(f"--columns names {key} twice ({spec!r})")
        out[key] = name
    if out.get("a") is not None and out.get("a") == out.get("b", "b" if "b" not in out else None):
        raise SimattrError(f"--columns maps a and b to the same column {out['a']!r}")
    return out


def read_lines(path: str, what: str = "") -> list:
    """The lines of a UTF-8 text file ('-': standard input); a file that cannot be read or is not UTF-8 text is a
    SimattrError naming it (and the line of the first bad byte)."""
    label = f"{what} {path!r}" if what else repr(path)
    text = _read_text(path, label)
    if not text:
        return []
    return [ln.rstrip("\r") for ln in text.split("\n")][: -1 if text.endswith("\n") else None]


def _read_text(path: str, label: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise SimattrError(f"cannot read {label}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise SimattrError(f"{label} is not UTF-8 text (line {line}, byte {exc.start}: "
                           f"{data[exc.start:exc.start + 1]!r}); convert it, e.g. iconv -t UTF-8") from None
    if "\x00" in text:
        raise SimattrError(f"{label} holds NUL bytes: a binary file, not text")
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark is not text


def read_pairs(path: str, columns: Optional[dict] = None) -> Pairs:
    """The pairs of a file or directory, by its kind: .parquet (or a directory of .parquet files), a `datasets`
    directory (save_to_disk), .csv, .tsv, or JSON lines (anything else, and '-': standard input). A .tsv or .csv
    whose first row is not a header of the mapped columns is read as two headerless columns a, b."""
    names = dict(DEFAULT_COLUMNS, **(columns or {}))
    if path != "-" and os.path.isdir(path):
        if _is_saved_dataset(path):
            return from_dataset(_load_from_disk(path), columns)
        files = sorted(f for f in os.listdir(path) if f.endswith(".parquet"))
        if not files:
            raise SimattrError(f"the directory {path!r} holds no .parquet files and no saved datasets dataset")
        return _from_table(read_parquet_files([os.path.join(path, f) for f in files]), names, path)
    lower = path.lower()
    if lower.endswith(".parquet"):
        return _from_table(read_parquet_files([path]), names, path)
    if lower.endswith((".csv", ".tsv")):
        return _read_delimited(path, names, "\t" if lower.endswith(".tsv") else ",")
    return _read_jsonl(path, names)


def from_dataset(ds, columns: Optional[dict] = None) -> Pairs:
    """The pairs of a Hugging Face `datasets.Dataset` (or a DatasetDict with one split)."""
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):  # a DatasetDict
        splits = list(ds.keys())
        if len(splits) != 1:
            raise SimattrError(f"the dataset has splits {', '.join(splits)}: give one (dataset['train'])")
        ds = ds[splits[0]]
    names = dict(DEFAULT_COLUMNS, **(columns or {}))
    data = {c: ds[c] for c in ds.column_names if c in names.values()}
    return _from_columns(data, names, "the dataset", list(ds.column_names))


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _load_from_disk(path: str):
    try:
        import datasets
    except ImportError:
        raise SimattrError(f"{path!r} is a Hugging Face datasets directory: pip install datasets") from None
    try:
        return datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001
        raise SimattrError(f"cannot load the dataset {path!r}: {exc}") from None


def read_parquet_files(files: list):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SimattrError("reading Parquet needs pyarrow: pip install 'simattr[data]'") from None
    try:
        return pa.concat_tables([pq.read_table(f) for f in files])
    except Exception as exc:  # noqa: BLE001  (a corrupt or non-Parquet file)
        raise SimattrError(f"cannot read Parquet {files[0] if len(files) == 1 else files!r}: {exc}") from None


def _from_table(table, names: dict, label: str) -> Pairs:
    wanted = [c for c in table.column_names if c in names.values()]
    return _from_columns(table.select(wanted).to_pydict(), names, repr(label), table.column_names)


def _from_columns(data: dict, names: dict, label: str, available: list) -> Pairs:
    for key in ("a", "b"):
        if names[key] not in data:
            raise SimattrError(f"{label} has no column {names[key]!r} for text {key} (its columns: "
                               f"{', '.join(map(str, available))}); map one with --columns {key}=NAME")
    a, b = list(data[names["a"]]), list(data[names["b"]])
    ids = list(data[names["id"]]) if names["id"] in data else list(range(len(a)))
    if names["id"] not in data and names["id"] != "id":
        raise SimattrError(f"{label} has no id column {names['id']!r}")
    return Pairs(_unique(ids, label), a, b)


def _unique(ids: list, label: str) -> list:
    seen = set()
    for i in ids:
        if i is None:
            raise SimattrError(f"{label}: an id is missing (null)")
        key = str(i)  # 5 and "5" are one id in an output (ids are written as strings when they are not all ints)
        if key in seen:
            raise SimattrError(f"{label}: the id {i!r} occurs twice; ids must be unique (resume and the output "
                               f"go by id)")
        seen.add(key)
    return ids


def _read_delimited(path: str, names: dict, delimiter: str) -> Pairs:
    text = _read_text(path, repr(path))
    try:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter)]
    except csv.Error as exc:
        raise SimattrError(f"{path}: not {'TSV' if delimiter == chr(9) else 'CSV'}: {exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return Pairs([], [], [])
    header = rows[0]
    if names["a"] in header and names["b"] in header:
        index = {name: header.index(name) for name in header}
        body = rows[1:]
        for n, r in enumerate(body, 2):
            if len(r) != len(header):
                raise SimattrError(f"{path}:{n}: {len(r)} columns, the header has {len(header)}")
        data = {name: [r[index[name]] for r in body] for name in names.values() if name in index}
        if names["id"] in data:
            data[names["id"]] = [_number_if_int(v) for v in data[names["id"]]]
        return _from_columns(data, names, repr(path), header)
    if delimiter == "\t":  # the headerless two-column TSV: a, b
        for n, r in enumerate(rows, 1):
            if len(r) != 2:
                raise SimattrError(f"{path}:{n}: expected two tab-separated texts (or a header naming the "
                                   f"columns {names['a']!r} and {names['b']!r})")
        return Pairs(list(range(len(rows))), [r[0] for r in rows], [r[1] for r in rows])
    raise SimattrError(f"{path}: the first row is not a header with columns {names['a']!r} and {names['b']!r} "
                       f"(map others with --columns a=NAME,b=NAME)")


def _number_if_int(v: str):
    return int(v) if v.strip().lstrip("-").isdigit() else v


def _read_jsonl(path: str, names: dict) -> Pairs:
    ids, a, b = [], [], []
    label = "standard input" if path == "-" else path
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise SimattrError(f"{label}:{n}: expected a JSON object with {names['a']!r} and {names['b']!r}")
        texts = []
        for key in ("a", "b"):
            value = obj.get(names[key])
            if value is None and names[key] == key:
                value = next((obj[k] for k in TEXT_ALIASES[key] if k in obj), None)
            if not isinstance(value, str):
                raise SimattrError(f"{label}:{n}: {names[key]!r} must be a string, got "
                                   f"{'nothing' if value is None else type(value).__name__}")
            texts.append(value)
        if names["id"] in obj:
            ids.append(obj[names["id"]])
        elif names["id"] != "id":
            raise SimattrError(f"{label}:{n}: no id {names['id']!r}")
        else:
            ids.append(len(a))
        a.append(texts[0])
        b.append(texts[1])
    return Pairs(_unique(ids, label), a, b)


def from_text_files(path_a: str, path_b: str, all_pairs: bool) -> Pairs:
    """Texts one per line (blank lines skipped): line k of each file (one line in a file: paired with every line of
    the other), or with all_pairs every text of a with every text of b (id: the row of the grid, i·len(b) + j)."""
    ta = [t for t in read_lines(path_a) if t.strip()]
    tb = [t for t in read_lines(path_b) if t.strip()]
    if all_pairs:
        a = [x for x in ta for _ in tb]
        return Pairs(list(range(len(a))), a, tb * len(ta))
    if len(ta) != len(tb) and 1 not in (len(ta), len(tb)):
        raise SimattrError(f"{len(ta)} texts a and {len(tb)} texts b: give equal numbers, one text on a side, or "
                           f"--all-pairs")
    n = max(len(ta), len(tb))
    a = ta * n if len(ta) == 1 else ta
    b = tb * n if len(tb) == 1 else tb
    return Pairs(list(range(n)), a, b)
