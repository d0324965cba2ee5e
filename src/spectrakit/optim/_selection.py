"""Which parameters a SPECTRA optimizer clips: ``clip_apply_to`` and ``clip_exclude`` name patterns."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import Tensor

from ._validate import check_choice

APPLY_TO = ("all", "matrices")


def check_selection(apply_to: str, exclude: Sequence[str]) -> None:
    """apply_to: "all" (1-D parameters use the vector rule) | "matrices"; exclude: regexes on parameter names."""
    check_choice(apply_to, "clip_apply_to", APPLY_TO)
    if isinstance(exclude, str) or not isinstance(exclude, Sequence) or not all(isinstance(e, str) for e in exclude):
        raise ValueError(f"clip_exclude must be a sequence of regular expressions (strings), got {exclude!r}")
    try:
        for pattern in exclude:
            re.compile(pattern)
    except re.error as err:
        raise ValueError(f"clip_exclude contains an invalid regular expression: {err}") from err


def is_clipped(name: str, p: Tensor, apply_to: str, exclude: Iterable[str]) -> bool:
    """True when the parameter is clipped (``re`` caches the compiled patterns)."""
    if apply_to == "matrices" and p.dim() < 2:
        return False
    return not any(re.search(pattern, name) for pattern in exclude)

