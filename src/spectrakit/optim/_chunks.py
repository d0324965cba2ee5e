"""Group same-shape tensors so that matrix functions run on stacked batches (fewer, larger kernels)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def chunks_by_key(items: list[T], key: Callable[[T], Hashable], size: int) -> list[list[T]]:
    """Items grouped by ``key`` (in order of first appearance), each group cut into chunks of <= ``size``."""
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [members[i:i + size] for members in groups.values() for i in range(0, len(members), size)]
