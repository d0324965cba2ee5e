"""The spike-aware optimizer (Huang et al. 2026, arXiv 2602.11185; the paper calls it "Spectra", a different
system from SPECTRA spectral clipping).

The momentum of a hidden matrix carries a few dominant "spike" directions (~1.5% of them) whose singular
values dwarf the rest. Find them with a cached, warm-started block power iteration, shrink only them to the
tail's scale, leave the tail alone, and take an RMS-normalized step. Per matrix M (m x n), q = min(m, n):

    M <- mu M + G                                         (sum momentum, mu = 0.95)
    (U_k, s_k, V_k) = top-k triplets of M                 (k = max(1, round(rank_fraction q)))
    Tail = M - U_k diag(s_k) V_k^T
    sigma_tail = ||Tail||_F / sqrt(q - k)                 (RMS of the tail singular values)
    O = Tail + sigma_tail U_k V_k^T                       (spike singular values replaced by the tail scale)
    W <- (1 - lr wd) W - 0.2 lr O / (RMS(O) + eps),       RMS(O) = ||O||_F / sqrt(m n)

Tail and O are formed explicitly (in float32, or float64 for float64 parameters) and both norms are taken
from them: ||Tail||_F^2 = ||M||_F^2 - ||s_k||^2 would cancel to rounding noise when M has rank <= k, and
RMS(O) = sigma_tail sqrt(q / (m n)) would then divide by that noise (steps of 20 to 10^6 x the documented
RMS). Every step has RMS 0.2 lr ||O||_F / (||O||_F + eps sqrt(m n)) <= 0.2 lr.

An empty tail. When ||Tail||_F <= tol ||M||_F, tol = 2 eps(momentum dtype) + 16 eps(compute dtype) (what
is left is the rounding of M, accumulated over steps, and of the triplets, not a tail), M has rank r <= k:
every direction it has is a spike, and there is no tail scale to shrink them to. They then share one scale,
their own RMS s_hat = ||s_r|| / sqrt(r) over the r triplets with s_i > tol ||M||_F (the rest are rounding):
O = s_hat U_r V_r^T (||O||_F = ||M||_F; for r = 1, O = M). This keeps the paper's intent (spike singular
values equalized, the step RMS-normalized), keeps "every non-zero momentum takes a step of RMS 0.2 lr" (the
exact-arithmetic reading, O = 0, would stall a layer whose gradients have rank <= k, e.g. a batch of one),
and a zero momentum still takes a zero step.

The block power iteration (T steps, warm-started from the cached V_k; the first step starts from a Gaussian
block, a randomized range finder) is  P = M V;  U = QR(P);  W = M^T U;  s = column norms of W;  V = W / s.
By default a Rayleigh-Ritz rotation within the block (a k x k eigendecomposition) then makes (U, s, V) the
exact singular triplets of U U^T M. Either way U diag(s) V^T = U U^T M, so Tail = (I - U U^T) M. In a sync-free
step (``sync_free``) the eigendecomposition, which synchronises on CUDA, is replaced by QR and simultaneous
Jacobi sweeps on the k x k W^T W (:func:`spectrakit.linalg.power.ritz_rotation`, accumulating over the block
steps and the warm-started optimizer steps): the same triplets and polar factor U_k V_k^T to float32 rounding
when the spectrum is resolved, Tail unchanged (see spectrakit.linalg.power for the worst cases).

State per matrix: the momentum and V (n x k), (1 + k/m)/2 of AdamW's two moments: about 0.51x for k/m = 1.5%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..linalg import block_power_iteration
from ._matrices import MatrixViews, check_flatten, flattens, matrix_view, start_block
from ._validate import check_positive, check_unit_interval
from .spectral_optimizer import SpectralOptimizer, scalar_lr

_TINY = 1e-30


def spike_rank(shape: tuple[int, ...], rank_fraction: float) -> int:
    """k = max(1, round(rank_fraction * min(m, n))) for a (..., m, n) matrix."""
    return max(1, round(rank_fraction * min(shape[-2], shape[-1])))


def spike_shaped(M: Tensor, U: Tensor, s: Tensor, V: Tensor, tol: float) -> Tensor:
    """O = Tail + sigma_tail U_k V_k^T of M (..., m, n), given its top-k triplets (U (..., m, k), s (..., k),
    V (..., n, k)) with U diag(s) V^T = U U^T M, all in M's dtype.

    A tail with ||Tail||_F <= tol ||M||_F is empty: then O = s_hat U_r V_r^T over the r triplets with
    s_i > tol ||M||_F, s_hat their RMS (see the module docstring); O = 0 for M = 0.
    """
    m, n = M.shape[-2:]
    k = s.shape[-1]
    spike = s[..., :, None] * V.mT  # (..., k, n)
    tail = torch.addmm(M, U, spike, alpha=-1) if M.dim() == 2 else M - U @ spike
    floor = tol * torch.linalg.vector_norm(M, dim=(-2, -1))
    tail_norm = torch.linalg.vector_norm(tail, dim=(-2, -1))
    empty = tail_norm <= floor
    sigma_tail = torch.where(empty, 0.0, tail_norm / math.sqrt(min(m, n) - k))
    kept = s > floor[..., None]
    s_hat = ((s.square() * kept).sum(-1) / kept.sum(-1).clamp_min(1)).sqrt()
    scale = torch.where(empty[..., None], s_hat[..., None] * kept, sigma_tail[..., None])  # (..., k)
    tail.masked_fill_(empty[..., None, None], 0.0)
    shaped = scale[..., :, None] * V.mT
    return tail.addmm_(U, shaped) if M.dim() == 2 else tail.add_(U @ shaped)


def _exact_top(M: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[..., :k], S[..., :k], Vh[..., :k, :].mT


def _check_settings(settings: dict[str, Any]) -> None:
    """Check the rule's settings present in ``settings`` (constructor defaults or a param group), by key."""
    if "momentum" in settings:
        check_unit_interval(settings["momentum"], "momentum")
    if "rank_fraction" in settings:
        fraction = settings["rank_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"rank_fraction must be in the open interval (0, 1), got {fraction!r}")
    for key in ("power_iters", "cold_power_iters"):
        value = settings.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    for key in ("update_scale", "eps"):  # eps > 0: a zero momentum must give a zero step, not 0 / 0
        if key in settings:
            check_positive(settings[key], key)
    for key in ("rayleigh_ritz", "exact_svd"):
        if not isinstance(settings.get(key, False), bool):
            raise ValueError(f"{key} must be a bool, got {settings[key]!r}")
    check_flatten(settings.get("flatten"))


class SpikeAware(MatrixViews, SpectralOptimizer):
    """The spike-aware optimizer (Huang et al. 2026, arXiv 2602.11185); the rule is in this module's docstring.

    Hidden matrices take the spike-aware rule (a conv kernel (out, in, *kernel) as one (out, in * kernel)
    matrix, other leading dims of >2-D tensors as stacks of matrices: ``flatten`` as in :class:`SSO`);
    embeddings, the output head and vectors go to the internal AdamW rule (wd 0.1, betas (0.9, 0.95)) unless
    routed otherwise (see ``SpectralOptimizer``).

    Args:
        params: a model, tensors, (name, tensor) pairs or param groups. A group may override every setting of
            the rule below (all but ``track_stats`` and the ``adamw_*``, ``fallback*`` and ``nonfinite``
            options): they are param-group keys, checked as here.
        lr: learning rate; the update RMS is ``update_scale * lr`` (AdamW-like learning rates carry over).
        momentum: mu of the sum momentum M <- mu M + G (0.95, as in the re-implementations).
        rank_fraction: k = max(1, round(rank_fraction * min(m, n))) spike directions; must leave k < min(m, n).
        power_iters: block power iterations per step (warm-started from the cached V).
        cold_power_iters: iterations of the first step (a randomized range finder from a Gaussian block).
        rayleigh_ritz: rotate the power iteration's basis to the exact singular triplets of its subspace (a k x k
            eigendecomposition, or orthogonal iteration on it in a sync-free step; see
            :func:`spectrakit.linalg.block_power_iteration`). False is the quoted Algorithm 1 as is.
        update_scale: the 0.2 in 0.2 lr O / RMS(O). eps: added to RMS(O).
        weight_decay: decoupled weight decay of the hidden matrices, W <- (1 - lr wd) W.
        exact_svd: take the top-k triplets from a full SVD (float32; float64 for float64 parameters) instead of
            the power iteration: for tests and small models only.
        flatten: None (conv kernels flattened), True or False: see :class:`SSO`.
        track_stats: record for :meth:`statistics` (scalar tensors, no host sync) "spike/energy_fraction/<name>"
            = ||U_k s_k V_k^T||_F^2 / ||M||_F^2, the spike's share of the momentum energy (mean over stacked
            matrices).
        adamw_*, fallback, fallback_patterns, nonfinite, sync_free: see ``SpectralOptimizer``.
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.95, rank_fraction: float = 0.015,
                 power_iters: int = 1, *, cold_power_iters: int = 4, rayleigh_ritz: bool = True,
                 update_scale: float = 0.2, eps: float = 1e-8, weight_decay: float = 0.1, exact_svd: bool = False,
                 flatten: bool | None = None, track_stats: bool = False,
                 fallback: Iterable[str] = ("vectors", "embeddings", "head"), fallback_patterns: Iterable[str] = (),
                 adamw_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = 0.1, nonfinite: str | None = None,
                 sync_free: bool | None = None) -> None:
        defaults = {"lr": lr, "momentum": momentum, "rank_fraction": rank_fraction, "power_iters": power_iters,
                    "cold_power_iters": cold_power_iters, "rayleigh_ritz": bool(rayleigh_ritz),
                    "update_scale": update_scale, "eps": eps, "weight_decay": weight_decay,
                    "exact_svd": bool(exact_svd), "flatten": flatten}
        _check_settings(defaults)
        self.track_stats = bool(track_stats)
        super().__init__(params, defaults, fallback=fallback, fallback_patterns=fallback_patterns, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         nonfinite=nonfinite, sync_free=sync_free)

    #: a group may override any constructor setting of the rule (the same checks, by key)
    _check_settings = staticmethod(_check_settings)

    def _initial_state(self, key: str, value: Tensor) -> Tensor:
        """The power iteration's start block V is a seeded Gaussian block (the momentum starts at zero)."""
        if key == "spike_v":
            return start_block(value.shape, value.device, value.dtype)
        return super()._initial_state(key, value)

    def _check_matrix(self, group: dict[str, Any], name: str, W: Tensor) -> None:
        k, q = spike_rank(W.shape, group["rank_fraction"]), min(W.shape[-2:])
        if k >= q:
            raise ValueError(f"rank_fraction={group['rank_fraction']} gives k={k} spike directions for "
                             f"parameter {name} (a {W.shape[-2]} x {W.shape[-1]} matrix), but k must be < min(m, n) "
                             f"= {q}; lower rank_fraction or route the parameter to AdamW")

    def _spectral_step(self, group: dict[str, Any]) -> None:
        lr, wd = scalar_lr(group["lr"]), group["weight_decay"]
        for name, p in zip(group["param_names"], group["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            flat = flattens(p, group["flatten"])
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            compute = torch.promote_types(p.dtype, torch.float32)
            M = matrix_view(buf.to(compute), flat)
            m, n = M.shape[-2:]
            k = spike_rank(M.shape, group["rank_fraction"])
            if group["exact_svd"]:
                U, s, V = _exact_top(M, k)
            else:
                cold = "spike_v" not in state
                if cold:
                    state["spike_v"] = start_block((*M.shape[:-2], n, k), p.device, compute)
                iters = group["cold_power_iters"] if cold else group["power_iters"]
                U, s, V = block_power_iteration(M, state["spike_v"].to(compute), iters, group["rayleigh_ritz"],
                                                sync_free=self._sync_free_step)
                state["spike_v"] = V
            tol = 2 * torch.finfo(buf.dtype).eps + 16 * torch.finfo(compute).eps
            O = spike_shaped(M, U, s, V, tol)
            rms = torch.linalg.vector_norm(O, dim=(-2, -1)) / math.sqrt(m * n)
            c = group["update_scale"] * lr / (rms + group["eps"])  # (...,): the step is -c O
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(O.mul_(-c[..., None, None]).to(p.dtype).view(p.shape))
            if self.track_stats:
                energy = torch.linalg.vector_norm(M, dim=(-2, -1)).square()
                spike_energy = s.square().sum(-1)
                self._statistics[f"spike/energy_fraction/{name}"] = (spike_energy / energy.clamp_min(_TINY)).mean()

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state held for each parameter (momentum + V cache, or AdamW's moments)."""
        out = {}
        for group in self.param_groups:
            for name, p in zip(group["param_names"], group["params"]):
                out[name] = sum(t.numel() * t.element_size() for t in self.state.get(p, {}).values()
                                if isinstance(t, Tensor))
        return out
