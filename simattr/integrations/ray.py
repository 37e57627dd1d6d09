"""Ray Data: explain a dataset on a cluster with Ray's own scheduling, retries and I/O.

    import ray
    from simattr.integrations.ray import RayExplainer

    ds = ray.data.read_parquet("s3://bucket/pairs/")                     # columns id, a, b (or map them)
    out = ds.map_batches(RayExplainer, fn_constructor_kwargs={"method": "ij", "steps": 16},
                         concurrency=4, num_gpus=1, batch_size=256, batch_format="pyarrow")
    out.write_parquet("s3://bucket/explained/")

`RayExplainer` is a callable class: each actor of the pool loads the model once (on its GPU when Ray gives it one)
and explains every batch it receives with `Explainer.explain_batch`, so a pair that cannot be explained is an error
row (status, reason) and never fails the batch. Rows carry the input's ids, so the output is checkable against
the input and a rerun can be limited to the ids missing from it. Needs `pip install 'simattr[ray]'`.
"""
from __future__ import annotations

from typing import Optional

from ..errors import SimattrError


class RayExplainer:
    """A `map_batches` callable: model, method and options given once (fn_constructor_kwargs), batches in,
    result tables (`simattr.results` schema) out."""

    def __init__(self, model=None, method: str = "ij", *, columns: Optional[dict] = None, device: Optional[str] = None,
                 model_b=None, **options):
        import simattr
        from ..api import resolve_options
        from ..outputs import settings_hash
        resolve_options(method, options)  # a bad option fails when the actor starts, not per batch
        if device is None:
            import torch
            device = "cuda" if torch.cuda.is_available() else None  # the GPU Ray assigned (num_gpus)
        self.explainer = simattr.Explainer(model, model_b, device=device)
        self.method, self.columns, self.options = method, dict(columns or {}), options
        self.hash = settings_hash({"method": method, "options": options, "model": repr(model),
                                   "model_b": repr(model_b)})

    def __call__(self, batch):
        """One result row per input row, as a pyarrow Table. The batch needs an id column: batches are slices
        of the dataset, so a row number would not say which row it was."""
        from ..batch import columns_of
        id_column = self.columns.get("id", "id")
        names = batch.column_names if hasattr(batch, "column_names") else list(batch)
        if id_column not in names:
            raise SimattrError(f"a Ray batch needs an id column ({id_column!r}; map another with "
                               f"columns={{'id': ...}}): batches are slices, their row numbers are not the dataset's")
        columns_of(batch, self.columns)  # the columns are there
        return self.explainer.explain_batch(batch, self.method, columns=self.columns, settings_hash=self.hash,
                                            **self.options)
