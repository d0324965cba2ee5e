"""Group same-shape tensors so that matrix functions run on stacked batches (fewer, larger kernels).

A stack holds at most ``STACK_BUDGET`` elements (the temporary memory of one stacked matrix-function call grows
with it): small matrices stack up to the optimizer's batch size, larger ones fewer at a time (an MLP matrix of a
780M model, 6.3M elements: 5), and one above the budget (a 50304 x 768 embedding) stays alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import Tensor

T = TypeVar("T")

#: The most elements one stack of matrices holds: 2^25 (128 MiB of float32 directions, 8 matrices of 2^22).
STACK_BUDGET = 2**25


def stack_key(p: Tensor) -> Hashable:
    """Same tensor type (a DTensor never stacks with a plain tensor), shape, dtype and device share a key."""
    return (type(p), p.shape, p.dtype, p.device)


def stack_size(p: Tensor, batch: int) -> int:
    """How many matrices like ``p`` one stack takes: ``batch``, fewer when that would exceed ``STACK_BUDGET``."""
    return max(1, min(batch, STACK_BUDGET // max(1, p.numel())))


def chunks_by_key(items: list[T], key: Callable[[T], Hashable], size: Callable[[T], int]) -> list[list[T]]:
    """Items grouped by ``key`` (in order of first appearance), each group cut into chunks of at most
    ``size(first item of the group)``."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out = []
    for members in groups.values():
        n = size(members[0])
        out += [members[i:i + n] for i in range(0, len(members), n)]
    return out


def budgeted_runs(tensors: list[Tensor], budget: int | None = None) -> list[list[int]]:
    """Indices of ``tensors`` in consecutive runs of at most ``budget`` (default ``STACK_BUDGET``) elements in all
    (a larger tensor alone)."""
    budget = STACK_BUDGET if budget is None else budget
    runs: list[list[int]] = []
    total = budget
    for i, t in enumerate(tensors):
        if total + t.numel() > budget:
            runs.append([])
            total = 0
        runs[-1].append(i)
        total += t.numel()
    return runs

