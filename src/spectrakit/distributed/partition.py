"""Which rank does the matrix-function work of which parameter: a FLOP-balanced, deterministic partition.

The cost of one spectral update of a (..., m, n) matrix is dominated by products in the wide orientation
(q = min(m, n) rows, p = max(m, n) columns): a polar/Newton-Schulz step forms the q x q Gram matrix
(2 q^2 p flops), squares it (2 q^3) and multiplies it back (2 q^2 p). So the estimate used here is

    cost(m, n) = batch * (4 q^2 p + 2 q^3)        (one step; constant factors cancel in the balance)

and vectors cost their length. An optimizer that knows the real cost of its transform (the step engine's
``transform_flops``: e.g. 6.3 q^2 p + 57 q^3 for the accelerator soft clip, 3.25-4 q^2 p + 18 q^3 for its
bfloat16 fast mode, ``optim.transforms._clip_products``) replaces this estimate.
Parameters are assigned greedily, most expensive first, to the least loaded
rank (longest-processing-time rule, within 4/3 of the optimal makespan). Ties keep the input order, so
same-shape matrices are dealt out round-robin and each rank holds a batch of every shape it has. The result
depends only on shapes and order, so every rank computes the same partition without communicating.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def matrix_cost(shape: Sequence[int]) -> float:
    """Estimated flops of one spectral update of a tensor of ``shape`` (see the module docstring)."""
    if len(shape) < 2:
        return float(math.prod(shape))
    m, n = shape[-2], shape[-1]
    q, p = min(m, n), max(m, n)
    return float(math.prod(shape[:-2])) * (4.0 * q * q * p + 2.0 * q**3)


def balanced_owners(shapes: Sequence[Sequence[int]], world_size: int,
                    costs: Sequence[float] | None = None) -> list[int]:
    """Owner rank of each shape: longest processing time first onto the least loaded rank.

    Args:
        shapes: one shape per item, in a fixed order shared by all ranks.
        world_size: number of ranks (>= 1).
        costs: the cost of each item (e.g. the FLOPs its optimizer's transform reports); None: ``matrix_cost``.
    Returns a list of ranks, one per item.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if costs is not None and len(costs) != len(shapes):
        raise ValueError(f"costs must have one entry per shape ({len(shapes)}), got {len(costs)}")
    costs = [matrix_cost(s) for s in shapes] if costs is None else [float(c) for c in costs]
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    load = [0.0] * world_size
    owners = [0] * len(costs)
    for i in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners


def rank_loads(shapes: Sequence[Sequence[int]], owners: Sequence[int], world_size: int) -> list[float]:
    """Total estimated cost per rank for a given assignment."""
    load = [0.0] * world_size
    for shape, rank in zip(shapes, owners):
        load[rank] += matrix_cost(shape)
    return load
