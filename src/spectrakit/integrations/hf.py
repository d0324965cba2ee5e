"""Hugging Face ``Trainer``: parameter groups that keep their names, so spectrakit's routing sees them.

``Trainer.create_optimizer`` calls ``optimizer_cls(groups, **kwargs)`` with two groups of bare tensors
(decay and no-decay). Bare tensors have no names, so name-based routing (embeddings, output head,
``fallback_patterns``) cannot act on them; only the shape rule for vectors does. ``trainer_optimizer``
builds the same two groups from ``(name, tensor)`` pairs and hands them to ``Trainer`` through the
``"params"`` key of ``optimizer_cls_and_kwargs``, which ``Trainer`` uses in place of its own groups.
transformers itself is not imported here.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from torch.optim import Optimizer

# Trainer.get_decay_parameter_names: no weight decay on biases and normalization parameters.
_NO_DECAY_NAME = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")
_NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, _NORM_TYPES) or _NO_DECAY_NAME.search(full.lower()):
                names.add(full)
    return names


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainer's two groups (weight decay on / off) as lists of ``(name, tensor)`` pairs.

    Biases and parameters of normalization layers (or with ``norm`` in their name, as in
    ``Trainer.get_decay_parameter_names``) get ``weight_decay=0``; every other trainable parameter gets
    ``weight_decay``. Tied parameters appear once. Empty groups are left out.

    Args:
        model: the model whose trainable parameters are grouped.
        weight_decay: decoupled weight decay of the decay group (>= 0).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    off = _no_decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no trainable parameters")
    groups = [{"params": [(n, p) for n, p in named if n not in off], "weight_decay": float(weight_decay)},
              {"params": [(n, p) for n, p in named if n in off], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def trainer_optimizer(optimizer_cls: type[Optimizer], model: nn.Module, *, weight_decay: float = 0.0,
                      **kwargs: Any) -> tuple[type[Optimizer], dict[str, Any]]:
    """The ``optimizer_cls_and_kwargs`` argument of ``transformers.Trainer`` for a spectrakit optimizer.

    Example::

        cls_and_kwargs = trainer_optimizer(Spectra, model, lr=1e-3, weight_decay=0.1, clip_c=10.0)
        trainer = Trainer(model=model, args=args, train_dataset=data, optimizer_cls_and_kwargs=cls_and_kwargs)

    Trainer does not pass ``TrainingArguments.learning_rate`` or ``weight_decay`` to a class given this way:
    give ``lr`` (and any other constructor argument) here. Trainer's LR scheduler still drives the groups.

    Args:
        optimizer_cls: a ``torch.optim.Optimizer`` subclass taking ``(params, **kwargs)``.
        model: the model Trainer trains (build the groups from the model you hand to Trainer).
        weight_decay: weight decay of the decay group (biases and norms get 0), see ``decay_param_groups``.
        **kwargs: the optimizer's constructor arguments (``lr`` and the rest).

    Returns ``(optimizer_cls, {"params": named_groups, **kwargs})``.
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer subclass, got {optimizer_cls!r}")
    if "params" in kwargs:
        raise ValueError("params: trainer_optimizer builds the parameter groups from model; do not pass params")
    return optimizer_cls, {"params": decay_param_groups(model, weight_decay), **kwargs}
