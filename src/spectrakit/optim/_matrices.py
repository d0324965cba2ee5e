"""How a matrix rule sees a parameter with more than 2 dims: one flattened matrix, or a stack of matrices.

A convolution kernel (out, in, *kernel) is ONE linear map from in * prod(kernel) inputs to out outputs, and a
matrix rule must see it as the (out, in * prod(kernel)) matrix, as Muon implementations do; taking it as a
stack of (in, kw) or kh x kw matrices would treat every tap or pixel on its own. Other tensors with more than
2 dims (e.g. MoE experts (E, d_out, d_in)) are stacks of their trailing matrices.

``flatten`` (a param-group key): True flattens every parameter of the group with more than 2 dims, False
never does, None (the default) flattens conv kernels: tensors with 4 or more dims (Conv2d, Conv3d) and the
3-D weights of ``nn.Conv1d``-type modules of a model the optimizer was built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .routing import SPECTRAL


def conv_weight_ids(model: object) -> frozenset[int]:
    """ids of the convolution kernels of a model (empty for anything that is not an ``nn.Module``)."""
    if not isinstance(model, nn.Module):
        return frozenset()
    return frozenset(id(m.weight) for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))


def check_flatten(value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"flatten must be None (conv kernels), True or False, got {value!r}")


def flattens(p: Tensor, flatten: bool | None) -> bool:
    """Whether the rule sees ``p`` as one (p.shape[0], rest) matrix (see the module docstring)."""
    if p.dim() <= 2:
        return False
    return p.dim() >= 4 if flatten is None else flatten


def matrix_view(p: Tensor, flat: bool) -> Tensor:
    """``p`` as the rule sees it: (shape[0], rest) when ``flat``, else ``p`` itself (a view when ``p``'s
    layout allows one, e.g. not for a channels_last kernel: then a copy, to be written back by the caller)."""
    return p.reshape(p.shape[0], -1) if flat else p


def start_block(shape: Sequence[int], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """The cold start of a matrix rule's warm-started power iteration: a Gaussian block from a generator seeded
    with 0 (also the value the block is reset to when a sync-free step that created it is skipped)."""
    return torch.randn(tuple(shape), device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))


def describe(p: Tensor, flat: bool) -> str:
    """The routing report's note on how a parameter with more than 2 dims is seen."""
    if flat:
        return f"; seen as one {p.shape[0]} x {p[0].numel()} matrix (flatten)"
    return f"; a stack of {p.shape[:-2].numel()} {p.shape[-2]} x {p.shape[-1]} matrices, each on its own"


class MatrixViews:
    """Mixin for a ``SpectralOptimizer`` with a matrix rule and a ``flatten`` default: a model's 3-D conv
    kernels go to groups of their own with ``flatten=True`` (shapes alone cannot tell them from stacks), the
    routing report notes how each spectral parameter with more than 2 dims is seen, and every new spectral
    matrix passes the subclass's ``_check_matrix`` (or the group is not added)."""

    _conv1d_ids: frozenset[int] = frozenset()

    def __init__(self, params: Any, defaults: dict[str, Any], **options: Any) -> None:
        """The base optimizer's constructor, recognising the kernels of ``params`` (a model) while it adds its
        groups; ids of tensors added later mean nothing, so the set is dropped afterwards."""
        self._conv1d_ids = conv_weight_ids(params)
        try:
            super().__init__(params, defaults, **options)  # type: ignore[call-arg]
        finally:
            del self._conv1d_ids

    def _check_matrix(self, group: dict[str, Any], name: str, W: Tensor) -> None:
        """Raise ValueError if the rule cannot take ``W`` (a parameter as the rule sees it) with ``group``."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        first_group, first_route = len(self.param_groups), len(self._routes)
        try:
            for part in self._conv1d_apart(param_group):
                super().add_param_group(part)  # type: ignore[misc]
            list(self._spectral_matrices())  # names a spectral parameter with fewer than 2 dims
            new = [g for g in self.param_groups[first_group:] if g["rule"] == SPECTRAL]
            for group in new:
                for name, p in zip(group["param_names"], group["params"]):
                    self._check_matrix(group, name, matrix_view(p, flattens(p, group["flatten"])))
        except ValueError:
            del self.param_groups[first_group:], self._routes[first_route:]
            raise
        notes = {name: describe(p, flattens(p, group["flatten"])) for group in new
                 for name, p in zip(group["param_names"], group["params"]) if p.dim() > 2}
        self._routes[first_route:] = [replace(r, reason=r.reason + notes[r.name])
                                      if r.rule == SPECTRAL and r.name in notes else r
                                      for r in self._routes[first_route:]]

    def _conv1d_apart(self, param_group: dict[str, Any]) -> list[dict[str, Any]]:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)  # (an iterator is read once)
        is_conv1d = [id(t) in self._conv1d_ids and t.dim() == 3
                     for t in (item[1] if isinstance(item, tuple) else item for item in params)]
        if not any(is_conv1d) or param_group.get("flatten", self.defaults["flatten"]) is not None:
            return [{**param_group, "params": params}]
        if "param_names" in param_group:
            params = list(zip(param_group["param_names"], params))
        base = {k: v for k, v in param_group.items() if k not in ("params", "param_names")}
        rest = [item for item, conv in zip(params, is_conv1d) if not conv]
        convs = [item for item, conv in zip(params, is_conv1d) if conv]
        return [{**base, "params": rest}] * bool(rest) + [{**base, "params": convs, "flatten": True}]
