"""The many-pair job behind `simattr explain-many`: the pairs (`simattr.inputs`), this process's share of them
(`simattr.ranks`: torchrun, SLURM, Accelerate or --shard), the ids already written skipped (resume), the rest in
batches through `explain_batch` (`simattr.batch`), each batch's rows written as one Parquet part or appended to a
JSON-lines file (`simattr.outputs`), a progress bar, and a summary.

Exactly once: an id is skipped only when its row is in a finished part (or line), and a part is whole or absent,
so a job killed at any moment and resumed writes every id of its share once, with the values an uninterrupted run
gives (the rows do not depend on the batching: each pair's explanation is its own — except where a setting makes
a text's IJ path nodes depend on its partners: under steps='auto', sim='dot' places each text's nodes for its
largest partner in the batch, and a fixed quadrature takes one step count for the batch's worst pair; every pair
still meets tol).
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from . import ranks, results
from .batch import explain_rows
from .errors import SimattrError
from .inputs import Pairs


@dataclass
class Summary:
    pairs: int = 0  # of this share
    skipped: int = 0  # already written (resume)
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    parts: list = field(default_factory=list)

    def line(self, rank: ranks.Rank) -> str:
        who = f"rank {rank.rank} of {rank.world}: " if rank.world > 1 else ""
        done = self.ok + self.errors
        rate = done / self.seconds if self.seconds > 0 else 0.0
        return (f"simattr: {who}{self.pairs} pairs, {self.skipped} already written, {done} explained now: "
                f"{self.ok} ok, {self.errors} error rows; {rate:.2f} pairs/s")


def output_kind(path: Optional[str]) -> str:
    """"stdout", "jsonl" (a file ending in .jsonl / .json / .ndjson) or "parquet" (a folder of parts)."""
    if path is None:
        return "stdout"
    return "jsonl" if path.lower().endswith((".jsonl", ".json", ".ndjson")) else "parquet"


def share(pairs: Pairs, rank: ranks.Rank) -> list:
    """Indices into `pairs` of this rank's share (all of them for a single process)."""
    costs = [ranks.pair_cost(a, b) for a, b in zip(pairs.a, pairs.b)]
    return ranks.balanced_share(costs, rank.rank, rank.world)


def run(explainer_factory: Callable, pairs: Pairs, method: str, options: dict, *, output: Optional[str],
        resume: bool, job_hash: str, metadata: dict, rank: ranks.Rank = ranks.Rank(), part_size: int = 256,
        progress: str = "none", after: Optional[Callable] = None, emit: Optional[Callable] = None) -> Summary:
    """Explain this rank's share of `pairs` into `output` (see the module). explainer_factory: makes the Explainer
    when there is something to explain (the model loads only then); progress: "bar" (tqdm), "lines" or "none";
    after(e, a, b): called on each Explanation before its row is made (the faithfulness check); emit(rows): where
    rows go when output is None (standard output)."""
    from .outputs import JobOutput, PartsOutput
    if part_size < 1:
        raise SimattrError(f"--part-size must be positive, got {part_size}")
    mine = share(pairs, rank)
    summary = Summary(pairs=len(mine))
    kind = output_kind(output)
    if kind == "parquet":
        kind_of_id = results.id_type(pairs.ids)  # one id type for every part of the job
        store = PartsOutput(output, job_hash, resume,
                            lambda rows, meta: results.to_table(rows, meta, kind_of_id), rank.rank, metadata)
    elif kind == "jsonl":
        if rank.world > 1 and rank.launcher != "shard":  # launched ranks all get the same -o
            raise SimattrError(f"{rank.world} {rank.launcher} processes cannot share one JSON-lines file "
                               f"{output!r}: give a folder (Parquet parts, one set per rank)")
        store = JobOutput(output, job_hash, resume)
    else:
        store = None
    with store if store is not None else contextlib.nullcontext():
        done = {str(i) for i in store.done} if store is not None else set()  # ids by text: parts may hold them as strings
        todo = [k for k in mine if str(pairs.ids[k]) not in done]
        summary.skipped = len(mine) - len(todo)
        write = store.write if store is not None else emit
        if todo:
            explainer = explainer_factory()
            t0 = time.perf_counter()
            bar = _progress(progress, len(todo))
            for k0 in range(0, len(todo), part_size):
                block = todo[k0:k0 + part_size]
                rows = explain_rows(explainer, [pairs.ids[k] for k in block], [pairs.a[k] for k in block],
                                    [pairs.b[k] for k in block], method, job_hash, after=after, **options)
                name = write(rows)
                if name:
                    summary.parts.append(name)
                summary.ok += sum(r["status"] == "ok" for r in rows)
                summary.errors += sum(r["status"] != "ok" for r in rows)
                summary.seconds = time.perf_counter() - t0
                bar(len(rows), summary)
            bar(0, summary, close=True)
        if store is not None:
            store.finish()
    return summary


def _progress(kind: str, total: int) -> Callable:
    """A callback (n new rows, summary, close=False): a tqdm bar, progress lines on stderr, or nothing."""
    if kind == "bar":
        try:
            from tqdm import tqdm
        except ImportError:
            kind = "lines"
        else:
            bar = tqdm(total=total, unit="pair", file=sys.stderr, dynamic_ncols=True)

            def update(n, summary, close=False):
                bar.update(n)
                if summary.errors:
                    bar.set_postfix(errors=summary.errors)
                if close:
                    bar.close()
            return update
    if kind == "lines":
        def lines(n, summary, close=False):
            if close:
                return
            done = summary.ok + summary.errors
            rate = summary.seconds / max(done, 1)
            print(f"simattr: {done}/{total} pairs, {rate:.2f} s/pair, about {rate * (total - done) / 60:.1f} min left",
                  file=sys.stderr, flush=True)
        return lines
    return lambda n, summary, close=False: None
