"""Group same-shape tensors so that matrix functions run on stacked batches (fewer, larger kernels)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

from torch import Tensor

T = TypeVar("T")

#: Matrices with more elements than this are never stacked: batching them saves no kernel launches worth
#: having and multiplies the step's temporary memory (e.g. an embedding and an output head of equal shape).
STACK_LIMIT = 2**22


def stack_key(p: Tensor) -> Hashable:
    """Same tensor type (a DTensor never stacks with a plain tensor), shape, dtype and device share a key; tensors
    above STACK_LIMIT elements get a key of their own."""
    return (type(p), p.shape, p.dtype, p.device) if p.numel() <= STACK_LIMIT else ("alone", id(p))


def chunks_by_key(items: list[T], key: Callable[[T], Hashable], size: int) -> list[list[T]]:
    """Items grouped by ``key`` (in order of first appearance), each group cut into chunks of <= ``size``."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [members[i:i + size] for members in groups.values() for i in range(0, len(members), size)]
