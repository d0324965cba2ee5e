"""Which parameters a SPECTRA optimizer clips: ``clip_apply_to`` and ``clip_exclude`` name patterns."""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import Tensor

from ._validate import check_choice

APPLY_TO = ("all", "matrices")


class ClipSelection:
    """apply_to: "all" (1-D parameters use the vector rule) | "matrices"; exclude: regexes on parameter names."""

    def __init__(self, apply_to: str = "all", exclude: Iterable[str] = ()) -> None:
        check_choice(apply_to, "clip_apply_to", APPLY_TO)
        if isinstance(exclude, str):
            exclude = (exclude,)
        try:
            self.exclude = tuple(re.compile(p) for p in exclude)
        except re.error as err:
            raise ValueError(f"clip_exclude contains an invalid regular expression: {err}") from err
        self.apply_to = apply_to

    def __call__(self, name: str, p: Tensor) -> bool:
        """True when the parameter is clipped."""
        if self.apply_to == "matrices" and p.dim() < 2:
            return False
        return not any(pattern.search(name) for pattern in self.exclude)
