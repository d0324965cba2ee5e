"""The step engine: ``direction -> spectral transform -> decoupled step``, written once for every optimizer that
is a configuration of it (Spectra and its bases, Muon, NorMuon; SpectraWrapper reuses its transform stage).

For each spectral param group, an optimizer gives a :class:`StepPlan` (which registered direction and transform,
the transform's options, the stack size and the rectangular scale) and the threshold c_t of the step
(``_threshold(group)``, 1 by default), and the engine does:

    1. U = direction(g, state) for every parameter with a gradient (``torch._foreach_*`` over a list);
    2. parameters the transform skips (or every one, without a transform):  X <- (1 - lr wd) X - lr U;
    3. the others in same-shape stacks of at most ``batch`` (and at most ``_chunks.STACK_BUDGET`` elements): matrices,
       and vectors where the transform has a rule for a stack of them (``Transform.vector_rows``; scalars and
       DTensor shards one at a time); step 1 writes their directions straight into the stack (``out=``, see
       ``directions``), then
       Y = T(U) on the stack (one matrix-function call), then per parameter the transform's ``finish`` stage
       (if it has one) and  X <- (1 - lr wd) X - alpha_shape lr Y;
    4. statistics of the transformed parameters (``track_stats``): "sigma_max/<name>" and, for the clips,
       "clipped_fraction/<name>" (see ``stats``); with ``StepPlan.record_c``, "clip_c/group<i>".
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..linalg._sharded import is_sharded
from ._chunks import chunks_by_key, stack_key, stack_size
from .directions import Direction
from .scale import shape_scale
from .spectral_optimizer import SpectralOptimizer, decoupled_step, decoupled_steps
from .stats import record_clip_statistics, threshold_tensor
from .transforms import Transform, TransformOptions


class StepPlan(NamedTuple):
    """How the engine steps one param group.

    direction: None when the caller supplies the directions (SpectraWrapper recovers them).
    transform: None takes the plain step along the direction for every parameter.
    selected: (name, param) -> whether the transform applies to it.
    record_c: record "clip_c/group<i>" in the statistics.
    """

    direction: Direction | None
    transform: Transform | None
    options: TransformOptions
    batch: int
    scale: str
    selected: Callable[[str, Tensor], bool]
    record_c: bool = False


def without_host_reads(plan: StepPlan) -> StepPlan:
    """``plan`` for a sync-free step: the polar clips take the fixed accelerator schedule (``adaptive=False``,
    whose step count needs no host read)."""
    return plan._replace(options=plan.options._replace(adaptive=False))


def transform_and_step(plan: StepPlan, c: float | Tensor, named: list[tuple[str, Tensor]], stacked: Tensor,
                       states: list[dict[str, Any]] | None, group: dict[str, Any], lr: Any, weight_decay: float,
                       statistics: dict[str, Tensor] | None) -> None:
    """Steps 3-4 for one chunk (same shape, at most ``plan.batch``) at threshold ``c``: Y = T(U) on ``stacked``
    (the chunk's directions stacked along a new first dim; a single parameter's direction itself), finish,
    decoupled step, statistics (when ``statistics`` is a dict). c = 0 (a decayed threshold): the parameters only
    decay. A tensor ``c`` (sync-free steps with a tensor lr) is not read on the host: c = inf (lr = 0 in the
    warmup) and c = 0 are selected on the device (U unchanged, zero)."""
    assert plan.transform is not None
    if not isinstance(c, Tensor) and c == 0:  # the decay phase reached c = 0: the clipped direction is zero
        for _, p in named:
            decoupled_step(p, None, lr, weight_decay)
        return
    vector = named[0][1].dim() < 2
    transform = plan.transform
    if vector and len(named) > 1:  # a stack of vectors (see _vector_chunks)
        assert transform.vector_rows is not None
        apply = partial(transform.vector_rows, stacked)
    else:
        apply = partial(transform, stacked, vector=vector, need_bound=statistics is not None)
    if isinstance(c, Tensor) and transform.uses_threshold:
        usable = torch.isfinite(c) & (c > 0)
        Y, bound = apply(torch.where(usable, c, 1.0), plan.options)
        Y = torch.where(usable, Y, torch.where(c > 0, stacked, 0.0).to(Y.dtype))
    else:
        Y, bound = apply(c, plan.options)
    updates = [Y] if len(named) == 1 else list(Y.unbind(0))
    if transform.finish is not None:
        assert states is not None
        updates = [transform.finish(update, state, group) for update, state in zip(updates, states)]
    decoupled_steps([p for _, p in named], updates, lr, weight_decay, shape_scale(named[0][1].shape, plan.scale))
    if statistics is not None:
        for i, ((name, _), update) in enumerate(zip(named, updates)):
            record_clip_statistics(statistics, name, update, bound if len(named) == 1 else bound[i],
                                   transform.name, c)


def stacked_directions(direction: Direction, grads: list[Tensor], states: list[dict[str, Any]],
                       group: dict[str, Any]) -> Tensor:
    """The directions of same-shape ``grads`` as one (len(grads), *shape) stack, written into it by the direction
    (no list of directions is made and then copied); a single gradient's direction as it is. DTensor shards are
    stacked with ``torch.stack`` (an empty DTensor stack would need their placements)."""
    if len(grads) == 1:
        return direction(grads, states, group)[0]
    if is_sharded(grads[0]):
        return torch.stack(direction(grads, states, group))
    first = grads[0]
    stacked = torch.empty((len(grads), *first.shape), dtype=first.dtype, device=first.device)
    direction(grads, states, group, out=list(stacked.unbind(0)))
    return stacked


def _vector_chunks(vectors: list[tuple[str, Tensor]], plan: StepPlan) -> list[list[tuple[str, Tensor]]]:
    """Same-length plain 1-D vectors in stacks of at most ``plan.batch`` where the transform has a rule for a stack
    (``Transform.vector_rows``); scalars, DTensor shards and the vectors of other transforms one at a time."""
    if plan.transform is None or plan.transform.vector_rows is None:
        return [[item] for item in vectors]
    alone = [[item] for item in vectors if item[1].dim() == 0 or is_sharded(item[1])]
    stackable = [item for item in vectors if item[1].dim() == 1 and not is_sharded(item[1])]
    return alone + chunks_by_key(stackable, lambda item: stack_key(item[1]),
                                 lambda item: stack_size(item[1], plan.batch))


class SpectralEngine(SpectralOptimizer):
    """A :class:`SpectralOptimizer` whose spectral rule is the engine's step; subclasses give ``_plan(group)``.

    ``track_stats`` (an attribute, set by the subclass) turns the statistics on.
    """

    track_stats: bool = False
    masks_its_runs = True  # the plain runs and the stacks are masked one at a time (see ``_masked``)

    def _plan(self, group: dict[str, Any]) -> StepPlan:
        """How ``group`` steps (read from its settings; no side effects)."""
        raise NotImplementedError

    def _threshold(self, group: dict[str, Any]) -> float:
        """c_t of the step about to be taken (called once per group and step; may advance a schedule)."""
        return 1.0

    def _spectral_step(self, group: dict[str, Any]) -> None:
        plan, c = self._plan(group), self._threshold(group)
        if self._sync_free_step:
            plan = without_host_reads(plan)
        statistics = self._statistics if self.track_stats else None
        if statistics is not None and plan.record_c and plan.transform is not None:
            index = next(i for i, g in enumerate(self.param_groups) if g is group)
            statistics[f"clip_c/group{index}"] = threshold_tensor(c)
        named = [(n, p) for n, p in zip(group["param_names"], group["params"]) if p.grad is not None]
        plain, transformed = [], []
        for item in named:
            (transformed if plan.transform is not None and plan.selected(*item) else plain).append(item)
        self._masked_runs([p for _, p in plain], partial(self._plain_run, plan, group))
        vectors = _vector_chunks([item for item in transformed if item[1].dim() < 2], plan)
        matrices = chunks_by_key([item for item in transformed if item[1].dim() >= 2],
                                 lambda item: stack_key(item[1]), lambda item: stack_size(item[1], plan.batch))
        for chunk in vectors + matrices:
            self._masked(partial(self._transformed_run, plan, c, chunk, group, statistics), [p for _, p in chunk])

    def _plain_run(self, plan: StepPlan, group: dict[str, Any], params: list[Tensor]) -> None:
        """Step 2 for ``params``: the direction and the plain decoupled step."""
        directions = plan.direction([p.grad for p in params], [self.state[p] for p in params], group)
        decoupled_steps(params, directions, group["lr"], group["weight_decay"])

    def _transformed_run(self, plan: StepPlan, c: float | Tensor, chunk: list[tuple[str, Tensor]],
                         group: dict[str, Any], statistics: dict[str, Tensor] | None) -> None:
        """Steps 1 and 3-4 for one chunk: its directions (written into their stack), then ``transform_and_step``."""
        states = [self.state[p] for _, p in chunk]
        stacked = stacked_directions(plan.direction, [p.grad for _, p in chunk], states, group)
        transform_and_step(plan, c, chunk, stacked, states, group, group["lr"], group["weight_decay"], statistics)

    def transform_flops(self, group: dict[str, Any], p: Tensor) -> float:
        """Estimated matmul FLOPs of the transform of ``p`` in ``group`` (its element count when it takes the
        plain step); the distributed partition balances ranks by it."""
        if group["rule"] != "spectral":
            return float(p.numel())
        plan = self._plan(group)
        if plan.transform is None:
            return float(p.numel())
        return plan.transform.flops(tuple(p.shape), plan.options)

    def rows_capable(self, group: dict[str, Any]) -> bool:
        """Whether this group's spectral rule runs unchanged on row-sharded matrices (elementwise math around a
        unitarily invariant transform of each whole parameter)."""
        plan = self._plan(group)
        return plan.transform is None or plan.transform.rows_capable
