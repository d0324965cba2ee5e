"""The base class of spectrakit's optimizers: routing, the internal AdamW rule, non-finite gradients.

Every optimizer here is ``direction -> spectral transform -> decoupled step``. Subclasses implement
``_spectral_step(group)`` for groups with ``rule == "spectral"``; groups with ``rule == "adamw"`` take the
AdamW rule below (torch.optim.AdamW semantics), so one object drives a whole model and LR schedulers,
closures and checkpoints see a single optimizer.

Contract (torch.optim's): settings that change the math live in ``defaults`` and param groups (per group,
saved by ``state_dict``); ``copy.deepcopy`` and pickling keep every other attribute (routing, counters) but not
hooks, as torch does; learning rates may be numbers or one-element tensors; only real floating-point parameters
are accepted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._chunks import budgeted_runs
from ._validate import check_betas, check_choice, check_lr, check_nonnegative, check_positive
from .directions import adamw_moments, foreach_parts
from .routing import ADAMW, SPECTRAL, Route, decide, format_routes, module_param_groups, validate_fallback
from .sync_free import (
    check_sync_free,
    count_skipped,
    first_device,
    found_nonfinite,
    masked_step,
    nonfinite_peaks,
    resolve_sync_free,
    skip_counter,
    zeros_initial,
)

NONFINITE_POLICIES = ("raise", "skip", "ignore")

#: Instance attributes torch.optim.Optimizer does not pickle (hooks may be closures); everything else is kept.
_HOOK_ATTRIBUTES = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
                    "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
                    "_optimizer_load_state_dict_post_hooks")


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or Inf; raised before any parameter is changed."""


def evaluate_closure(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (an optimizer's step runs under no_grad), or None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def scalar_lr(lr: float | Tensor) -> float | Tensor:
    """A group's lr as a number or a 0-d tensor (one-element tensors are reshaped; no host read)."""
    return lr.detach().reshape(()) if isinstance(lr, Tensor) else lr


def decoupled_step(p: Tensor, update: Tensor | None, lr: float | Tensor, weight_decay: float,
                   scale: float = 1.0) -> None:
    """X <- (1 - lr*wd) X - scale * lr * update, in place (update None: the decay alone); ``lr`` a number or a
    one-element tensor (no host read)."""
    lr = scalar_lr(lr)
    if isinstance(lr, Tensor):
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        if update is not None:
            p.addcmul_(update, lr, value=-scale)
        return
    p.mul_(1 - lr * weight_decay)
    if update is not None:
        p.add_(update, alpha=-lr * scale)


def decoupled_steps(params: list[Tensor], updates: list[Tensor], lr: float | Tensor, weight_decay: float,
                    scale: float = 1.0) -> None:
    """:func:`decoupled_step` for lists of parameters and updates (``torch._foreach_*`` ops)."""
    lr = scalar_lr(lr)
    if isinstance(lr, Tensor):
        for p, update in zip(params, updates):
            decoupled_step(p, update, lr, weight_decay, scale)
        return
    for part in foreach_parts(params):
        torch._foreach_mul_([params[i] for i in part], 1 - lr * weight_decay)
        torch._foreach_add_([params[i] for i in part], [updates[i] for i in part], alpha=-lr * scale)


def check_real_floating(name: str, p: Tensor, owner: str) -> None:
    """Raise ValueError naming the parameter unless it is a real floating-point tensor."""
    if p.is_complex() or not p.dtype.is_floating_point:
        raise ValueError(f"params: {name} has dtype {p.dtype}; {owner} supports real floating-point parameters only "
                         "(view complex parameters as real with torch.view_as_real, or leave them to another "
                         "optimizer)")


class SpectralOptimizer(Optimizer):
    """Base class: routes parameters, runs the internal AdamW rule and guards against non-finite gradients.

    Every subclass takes these arguments.

    Args:
        params: an ``nn.Module``, an iterable of tensors or of (name, tensor) pairs, or param-group dicts.
            A group may set ``rule="spectral"`` or ``rule="adamw"`` to override the routing.
        fallback: categories sent to the internal AdamW rule, among ("vectors", "embeddings", "head").
        fallback_patterns: regular expressions on parameter names that also go to AdamW.
        adamw_lr: learning rate of AdamW parts of groups that do not set ``lr`` themselves (None: the ``lr``
            default). Precedence: the group's own value, then the ``adamw_*`` argument, then the default.
        adamw_betas, adamw_eps: AdamW moment coefficients and epsilon.
        adamw_weight_decay: decoupled weight decay of AdamW parts, with the same precedence as ``adamw_lr``.
        nonfinite: "raise" raises NonFiniteGradientError naming the parameter, "skip" skips the whole step and
            counts it in ``skipped_steps``, "ignore" does no check (no host sync). None (default): "raise" when
            steps synchronise, "skip" when they are sync-free.
        sync_free: True: ``step()`` makes no host read (``spectrakit.optim.sync_free``): a step with a NaN or
            Inf gradient is skipped by masking on the device (parameters and state bitwise unchanged) and
            counted in ``skipped_steps``, then a 0-d int64 tensor on the device; the threshold schedule
            follows the calls of ``step()``, as an LR scheduler does (its c_t is a device tensor when lr is
            one); SSO's multiplier solver runs its full budget; SSO's and SpikeAware's Rayleigh-Ritz steps take
            no eigh/SVD, which synchronise on CUDA (``spectrakit.linalg.power``). Raising needs a host read:
            sync_free=True with nonfinite="raise" is a ValueError. False: the synchronising step (an int
            ``skipped_steps``). None (default): resolved at each step, True when the first parameter lives on an
            accelerator (not "cpu" or "meta") unless nonfinite="raise". An attribute like ``nonfinite`` (kept by
            deepcopy and pickling, not in ``state_dict``).
    """

    sync_free: bool | None = None  # (class defaults: optimizers pickled before the option existed)
    _sync_free_step = False
    _found_inf: Tensor | None = None  # during a sync-free step with a non-finite check: the device flag
    _given_nonfinite: Tensor | None = None  # the flag of ``masked_by``
    #: Whether ``_spectral_step`` masks its own bounded runs (``_masked``); otherwise each group's spectral step is
    #: masked as a whole.
    masks_its_runs = False

    def __init__(self, params: Any, defaults: dict[str, Any], *, fallback: Iterable[str] = ("vectors",),
                 fallback_patterns: Iterable[str] = (), adamw_lr: float | None = None,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float | None = None, nonfinite: str | None = None,
                 sync_free: bool | None = None) -> None:
        check_lr(defaults.get("lr", 0.0))
        check_nonnegative(defaults.get("weight_decay", 0.0), "weight_decay")
        if adamw_lr is not None:
            check_lr(adamw_lr, "adamw_lr")
        check_betas(adamw_betas, "adamw_betas")
        check_positive(adamw_eps, "adamw_eps")
        if adamw_weight_decay is not None:
            check_nonnegative(adamw_weight_decay, "adamw_weight_decay")
        if nonfinite is not None:
            check_choice(nonfinite, "nonfinite", NONFINITE_POLICIES)
        check_sync_free(sync_free)
        if sync_free and nonfinite == "raise":
            raise ValueError("nonfinite='raise' needs a host read, which sync_free=True rules out; pass "
                             "nonfinite='skip' (skipped on the device; the default with sync_free) or sync_free=False")
        self._fallback, self._patterns = validate_fallback(fallback, fallback_patterns)
        self._adamw_overrides = {"lr": adamw_lr, "weight_decay": adamw_weight_decay}
        self._routes: list[Route] = []
        self._embedding_ids: set[int] = set()
        self._unnamed_count = 0
        self.nonfinite = nonfinite
        self.sync_free = sync_free
        self._sync_free_step = False  # whether the step being taken is sync-free (set by ``step``)
        self.skipped_steps: int | Tensor = 0
        self._statistics: dict[str, Tensor] = {}
        if isinstance(params, nn.Module):
            params, self._embedding_ids = module_param_groups(params)
        defaults = {**defaults, "rule": None, "adamw_betas": tuple(adamw_betas), "adamw_eps": adamw_eps}
        super().__init__(params, defaults)
        device = first_device(self._params())
        if device is not None and self.steps_sync_free():
            self.skipped_steps = skip_counter(0, device)

    # ----------------------------------------------------------------------------------------- routing
    def _check_settings(self, settings: dict[str, Any]) -> None:
        """Raise ValueError naming the key unless the rule's settings in ``settings`` (the defaults with a group's
        overrides) are valid; every new group is checked so. Subclasses with settings override it."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its parameters are split into a spectral part and an AdamW part (see ``routing``).
        The group's settings are checked first (``_check_settings``; errors name the key)."""
        self._check_settings({**self.defaults, **param_group})
        group = dict(param_group)
        params = group.pop("params")
        params = [params] if isinstance(params, Tensor) else list(params)
        names = group.pop("param_names", None)
        named = []
        for i, item in enumerate(params):
            if isinstance(item, tuple):
                named.append(item)
            else:
                name = names[i] if names is not None else f"param{self._unnamed_count}"
                self._unnamed_count += names is None
                named.append((name, item))
        group_rule = group.pop("rule", None)
        if group_rule is not None:
            check_choice(group_rule, "rule", (SPECTRAL, ADAMW))
        parts: dict[str, list] = {SPECTRAL: [], ADAMW: []}
        for name, p in named:
            if not isinstance(p, Tensor):
                raise TypeError(f"params: {name} is a {type(p).__name__}, not a tensor")
            check_real_floating(name, p, type(self).__name__)
            rule, reason = decide(name, p, group_rule, self._fallback, self._patterns, self._embedding_ids)
            parts[rule].append((name, p))
            self._routes.append(Route(name, tuple(p.shape), rule, reason))
        for rule, members in parts.items():
            if not members:
                continue
            sub = {**group, "params": members, "rule": rule}
            if rule == ADAMW:  # the group's own lr / weight_decay win over the adamw_* arguments
                sub.update({k: v for k, v in self._adamw_overrides.items() if v is not None and k not in group})
            check_lr(sub.get("lr", self.defaults.get("lr", 0.0)))
            super().add_param_group(sub)

    def _spectral_matrices(self) -> Iterator[tuple[dict[str, Any], str, Tensor]]:
        """(group, name, param) for every spectral-rule parameter; raise ValueError for one with fewer than 2 dims
        (for optimizers whose spectral rule needs matrices)."""
        for group in self.param_groups:
            if group["rule"] != SPECTRAL:
                continue
            for name, p in zip(group["param_names"], group["params"]):
                if p.dim() < 2:
                    raise ValueError(f"{type(self).__name__} needs matrices for its spectral rule; parameter {name} "
                                     f"has shape {tuple(p.shape)} (route it to AdamW with fallback=('vectors', ...))")
                yield group, name, p

    @property
    def routing(self) -> list[Route]:
        """One :class:`Route` (name, shape, rule, reason) per parameter, in the order they were given."""
        return list(self._routes)

    def routing_report(self) -> str:
        """The routing as a readable table."""
        return format_routes(self._routes)

    def statistics(self) -> dict[str, Tensor]:
        """Diagnostics of the last step as a flat dict of scalar tensors (no host sync; empty unless the
        subclass was asked to track them, e.g. ``track_stats=True``, and after a skipped step). Subclasses fill
        ``self._statistics``, which every ``step()`` starts empty."""
        return dict(self._statistics)

    # -------------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = evaluate_closure(closure)
        self._statistics.clear()  # statistics() describes the last step only (empty after a skipped one)
        given = self._given_nonfinite
        self._sync_free_step = given is not None or self.steps_sync_free()
        if not self._sync_free_step:
            if not self._gradients_usable():
                self.skipped_steps += 1
                return loss
            self._run_groups()
            return loss
        named = self._named_grads()
        if given is None and (self.nonfinite == "ignore" or not named):
            self._run_groups()
            return loss
        found_inf = found_nonfinite([g for _, g in named]) if given is None else given
        self._found_inf = found_inf
        try:
            self._run_groups()
        finally:
            self._found_inf = None
        self.skipped_steps = count_skipped(self.skipped_steps, found_inf)
        return loss

    def _masked_runs(self, params: list[Tensor], update: Callable[[list[Tensor]], None]) -> None:
        """``update(run)`` for each bounded run of ``params`` (``_chunks.budgeted_runs``), each masked on its own
        (``_masked``)."""
        for run in budgeted_runs(params):
            members = [params[i] for i in run]
            self._masked(partial(update, members), members)

    def _masked(self, update: Callable[[], None], params: list[Tensor]) -> None:
        """Run ``update``, which changes only ``params`` and their state. In a sync-free step with a non-finite
        check, they are selected back where a gradient was non-finite (``sync_free.masked_step``): the copies
        this takes live only while ``update`` runs, so callers mask in bounded runs (``_chunks.budgeted_runs``,
        the engine's stacks) and a step holds one run's copies at a time, not the model's."""
        if self._found_inf is None:
            update()
        else:
            masked_step(update, params, self.state, self._found_inf, self._initial_state)

    @contextlib.contextmanager
    def masked_by(self, found_inf: Tensor) -> Iterator[None]:
        """Steps taken inside are sync-free and masked by ``found_inf`` (a 0-d bool on the device that the caller
        decided, e.g. agreed across ranks by ``DistributedSpectral``) instead of by the optimizer's own check;
        each advances ``skipped_steps`` by it."""
        self._given_nonfinite = found_inf
        try:
            yield
        finally:
            self._given_nonfinite = None

    def steps_sync_free(self) -> bool:
        """Whether ``step()`` now makes no host read (``sync_free`` resolved; see the class docstring)."""
        if self.sync_free is None and self.nonfinite == "raise":
            return False
        return resolve_sync_free(self.sync_free, self._params())

    def _params(self) -> Iterator[Tensor]:
        return (p for group in self.param_groups for p in group["params"])

    def _run_groups(self) -> None:
        for group in self.param_groups:
            if group["rule"] == ADAMW:
                self._adamw_step(group)
            elif self.masks_its_runs:
                self._spectral_step(group)
            else:
                self._masked(partial(self._spectral_step, group), [p for p in group["params"] if p.grad is not None])

    def _initial_state(self, key: str, value: Tensor) -> Tensor:
        """The value a state entry starts from, for one created by a skipped sync-free step (zeros; subclasses
        with other starting values override it)."""
        return zeros_initial(key, value)

    def _spectral_step(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def rows_capable(self, group: dict[str, Any]) -> bool:
        """Whether the spectral rule of ``group`` runs unchanged on row-sharded (FSDP2) matrices: elementwise math
        around unitarily invariant matrix functions of each whole parameter. False unless a subclass says so."""
        return False

    def transform_flops(self, group: dict[str, Any], p: Tensor) -> float | None:
        """Estimated FLOPs of the spectral rule on ``p`` (the distributed partition balances ranks by them);
        None: unknown (the partition's generic estimate is used)."""
        return None

    def _adamw_step(self, group: dict[str, Any]) -> None:
        with_grad = [p for p in group["params"] if p.grad is not None]
        for part in foreach_parts(with_grad):  # adamw_moments takes one foreach-compatible list
            self._masked_runs([with_grad[i] for i in part], partial(self._adamw_run, group))

    def _adamw_run(self, group: dict[str, Any], params: list[Tensor]) -> None:
        directions = adamw_moments([p.grad for p in params], [self.state[p] for p in params],
                                   group["adamw_betas"], group["adamw_eps"])
        decoupled_steps(params, directions, group["lr"], group["weight_decay"])

    def _named_grads(self) -> list[tuple[str, Tensor]]:
        out = []
        for group in self.param_groups:
            for name, p in zip(group["param_names"], group["params"]):
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise TypeError(f"{type(self).__name__} does not support sparse gradients (parameter {name})")
                    out.append((name, p.grad))
        return out

    def _gradients_usable(self) -> bool:
        """Check all gradients at once (one host sync); raise or report per the ``nonfinite`` policy."""
        named = self._named_grads()
        if self.nonfinite == "ignore" or not named:
            return True
        if bool(torch.isfinite(nonfinite_peaks([g for _, g in named])).all()):
            return True
        if self.nonfinite == "skip":
            return False
        bad = [name for name, g in named if not bool(torch.isfinite(g).all())]
        raise NonFiniteGradientError(
            f"non-finite gradient in parameter(s) {', '.join(bad)}; no parameter was changed. "
            "Pass nonfinite='skip' to skip such steps instead.")

    # ------------------------------------------------------------------------------------ checkpoints
    def __getstate__(self) -> dict[str, Any]:
        """Everything but the hooks (torch keeps only defaults, state and groups, which loses our attributes)."""
        return {k: v for k, v in self.__dict__.items() if k not in _HOOK_ATTRIBUTES}

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["spectrakit"] = {"skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; its tensors are copied, so the source optimizer's buffers are never shared.

        Parameter names stay this optimizer's own (they come from the model it was built on), whatever names
        the saved groups carry, so name-based options keep working after loading a state saved elsewhere.
        """
        state_dict = dict(state_dict)
        extra = state_dict.pop("spectrakit", {})
        state_dict["state"] = {key: _copied(value) for key, value in state_dict["state"].items()}
        names = [list(group["param_names"]) for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, own in zip(self.param_groups, names):
            group["param_names"] = own
        skipped = extra.get("skipped_steps", 0)  # a device tensor when saved by sync-free steps
        self.skipped_steps = skipped.clone() if isinstance(skipped, Tensor) else int(skipped)


def _copied(value: Any) -> Any:
    """A per-parameter state entry with its tensors cloned (other entries, which torch allows, as they are)."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: v.clone() if isinstance(v, Tensor) else v for k, v in value.items()}
    return value
