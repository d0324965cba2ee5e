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

from torch import Tensor, nn


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


def describe(p: Tensor, flat: bool) -> str:
    """The routing report's note on how a parameter with more than 2 dims is seen."""
    if flat:
        return f"; seen as one {p.shape[0]} x {p[0].numel()} matrix (flatten)"
    return f"; a stack of {p.shape[:-2].numel()} {p.shape[-2]} x {p.shape[-1]} matrices, each on its own"
