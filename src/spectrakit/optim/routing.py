"""Which parameters take an optimizer's spectral rule and which take its internal AdamW rule.

A parameter goes to AdamW when its group says ``rule="adamw"``, when its name matches one of
``fallback_patterns``, or when its category is listed in ``fallback``:

- ``"vectors"``: tensors with fewer than 2 dims (norm gains, biases, scalars);
- ``"embeddings"``: weights of ``nn.Embedding`` modules (when a model is given) or names such as
  ``embed_tokens``, ``tok_embeddings``, ``wte``, ``embedding``;
- ``"head"``: the output projection, named ``lm_head.weight``, ``output.weight`` or ``head.weight``, or a
  weight tied to an embedding.

Everything else takes the spectral rule. Each decision is recorded as a :class:`Route` with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

FALLBACK_CATEGORIES = ("vectors", "embeddings", "head")
SPECTRAL, ADAMW = "spectral", "adamw"

_EMBEDDING_NAME = re.compile(r"(^|\.)(embed_tokens|tok_embeddings|wte|wpe|embed|embedding|embeddings)(\.|$)")
_HEAD_NAME = re.compile(r"(^|\.)(lm_head|output|head)\.weight$")


@dataclass(frozen=True)
class Route:
    """Where one parameter went and why."""

    name: str
    shape: tuple[int, ...]
    rule: str
    reason: str


def validate_fallback(fallback: Iterable[str], fallback_patterns: Iterable[str]) -> tuple[tuple[str, ...],
                                                                                         tuple[re.Pattern, ...]]:
    if isinstance(fallback, str):
        raise ValueError(f"fallback must be a collection of {FALLBACK_CATEGORIES}, got the string {fallback!r}")
    fallback = tuple(fallback)
    for category in fallback:
        if category not in FALLBACK_CATEGORIES:
            raise ValueError(f"fallback entries must be among {FALLBACK_CATEGORIES}, got {category!r}")
    if isinstance(fallback_patterns, str):
        fallback_patterns = (fallback_patterns,)
    try:
        patterns = tuple(re.compile(p) for p in fallback_patterns)
    except re.error as err:
        raise ValueError(f"fallback_patterns contains an invalid regular expression: {err}") from err
    return fallback, patterns


def module_param_groups(model: nn.Module) -> tuple[list[dict], set[int]]:
    """Named parameters of a model as one group, and the ids of its embedding weights.

    Frozen parameters (requires_grad=False) are kept, as torch.optim keeps them: they are skipped while their
    grad is None and train once unfrozen.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    named = list(model.named_parameters())
    if not named:
        raise ValueError("params: the model has no parameters")
    return [{"params": named}], embedding_ids


def decide(name: str, p: torch.Tensor, group_rule: str | None, fallback: Sequence[str],
           patterns: Sequence[re.Pattern], embedding_ids: set[int]) -> tuple[str, str]:
    """(rule, reason) for one parameter."""
    if group_rule is not None:
        return group_rule, f"param group sets rule={group_rule!r}"
    for pattern in patterns:
        if pattern.search(name):
            return ADAMW, f"name matches fallback pattern {pattern.pattern!r}"
    if p.dim() < 2:
        if "vectors" in fallback:
            return ADAMW, f"{p.dim()}-D parameter (fallback includes 'vectors')"
        return SPECTRAL, f"{p.dim()}-D parameter (vector rule)"
    if id(p) in embedding_ids or _EMBEDDING_NAME.search(name):
        if "embeddings" in fallback:
            return ADAMW, "embedding (fallback includes 'embeddings')"
        return SPECTRAL, "embedding matrix"
    if _HEAD_NAME.search(name):
        if "head" in fallback:
            return ADAMW, "output head (fallback includes 'head')"
        return SPECTRAL, "output head matrix"
    return SPECTRAL, "matrix"


def format_routes(routes: Sequence[Route]) -> str:
    """A fixed-width table of routes, one line per parameter."""
    if not routes:
        return "(no parameters)"
    width = max(len("parameter"), *(len(r.name) for r in routes))
    lines = [f"{'parameter':<{width}}  {'shape':<16} {'rule':<9} reason"]
    lines += [f"{r.name:<{width}}  {str(list(r.shape)):<16} {r.rule:<9} {r.reason}" for r in routes]
    return "\n".join(lines)
