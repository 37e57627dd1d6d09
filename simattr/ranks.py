"""Splitting one job over processes without collectives: each process reads its rank and the world size from the
launcher's environment (torchrun and Accelerate: RANK / WORLD_SIZE / LOCAL_RANK; SLURM: SLURM_PROCID /
SLURM_NTASKS / SLURM_LOCALID), takes a deterministic, cost-balanced share of the pairs and writes its own part
files. The union of the shares is every pair exactly once.

Pair costs differ by orders of magnitude (a path method's passes grow with the square of the text length), so the
share is not a contiguous slice: the pairs are dealt longest first to the rank with the least total cost so far
(ties: the lower rank), which every rank computes alike from the same input.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from typing import Optional

from .errors import SimattrError


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launcher: str = "none"


def _int_env(*names) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise SimattrError(f"the environment variable {name}={value!r} is not an integer") from None
    return None


def from_environment() -> Rank:
    """This process's rank, world size and local rank from torchrun / Accelerate or SLURM (none: rank 0 of 1)."""
    world = _int_env("WORLD_SIZE")
    if world is not None:
        rank, local = _int_env("RANK") or 0, _int_env("LOCAL_RANK") or 0
        launcher = "torchrun"
    elif _int_env("SLURM_NTASKS") is not None:
        world, rank, local = _int_env("SLURM_NTASKS"), _int_env("SLURM_PROCID") or 0, _int_env("SLURM_LOCALID") or 0
        launcher = "slurm"
    else:
        return Rank()
    if world < 1 or not 0 <= rank < world:
        raise SimattrError(f"rank {rank} of world size {world} ({launcher} environment) is not a valid rank")
    return Rank(rank, world, local, launcher)


def parse_shard(spec: str) -> Rank:
    """--shard K/N: rank K of N."""
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        k, n = -1, 0
    if not 0 <= k < n:
        raise SimattrError(f"--shard takes K/N with 0 <= K < N, not {spec!r}")
    return Rank(k, n, 0, "shard")


def pair_cost(a, b) -> float:
    """A pair's relative cost: the squared lengths of its texts (passes x sequence length)."""
    la = len(a) if isinstance(a, str) else 1
    lb = len(b) if isinstance(b, str) else 1
    return float(la * la + lb * lb + 1)


def balanced_share(costs: list, rank: int, world: int) -> list:
    """The indices (in input order) that rank `rank` of `world` explains: longest-processing-time-first dealing."""
    if world == 1:
        return list(range(len(costs)))
    loads = [(0.0, r) for r in range(world)]
    mine = []
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        load, r = heapq.heappop(loads)
        if r == rank:
            mine.append(k)
        heapq.heappush(loads, (load + costs[k], r))
    return sorted(mine)


def device_for(rank: Rank, device: Optional[str]) -> Optional[str]:
    """cuda:LOCAL_RANK for a launched rank on a machine with GPUs when no device is given; else `device`."""
    if device is not None or rank.launcher in ("none", "shard"):
        return device
    import torch
    if torch.cuda.is_available():
        return f"cuda:{rank.local_rank % torch.cuda.device_count()}"
    return device
