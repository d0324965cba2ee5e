"""The spike-aware optimizer (Huang et al. 2026, arXiv 2602.11185; the paper calls it "Spectra", a different
system from SPECTRA spectral clipping).

The momentum of a hidden matrix carries a few dominant "spike" directions (~1.5% of them) whose singular
values dwarf the rest. Find them with a cached, warm-started block power iteration, shrink only them to the
tail's scale, leave the tail alone, and take an RMS-normalized step. Per matrix M (m x n), q = min(m, n):

    M <- mu M + G                                         (sum momentum, mu = 0.95)
    (U_k, s_k, V_k) = top-k triplets of M                 (k = max(1, round(rank_fraction q)))
    sigma_tail = sqrt((||M||_F^2 - ||s_k||^2) / (q - k))  (RMS of the tail singular values)
    O = M + U_k diag(sigma_tail - s_k) V_k^T              (= Tail + sigma_tail U_k V_k^T)
    W <- (1 - lr wd) W - 0.2 lr O / (RMS(O) + eps),       RMS(O) = ||O||_F / sqrt(m n)

The block power iteration (T steps, warm-started from the cached V_k; the first step starts from a Gaussian
block, a randomized range finder) is  P = M V;  U = QR(P);  W = M^T U;  s = column norms of W;  V = W / s.
By default a Rayleigh-Ritz rotation within the block (a k x k eigendecomposition) then makes (U, s, V) the
exact singular triplets of U U^T M. Either way U diag(s) V^T = U U^T M exactly, so Tail = (I - U U^T) M is
orthogonal to the spike part and ||O||_F^2 = (q - k) sigma_tail^2 + k sigma_tail^2 = q sigma_tail^2:
RMS(O) = sigma_tail sqrt(q / (m n)) needs no extra pass, and O is never formed: the step is W -= c M, then
W -= U (c diag(sigma_tail - s) V^T).

State per matrix: the momentum and V (n x k), (1 + k/m)/2 of AdamW's two moments: about 0.51x for k/m = 1.5%.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ._validate import check_positive, check_unit_interval
from .base import SpectralOptimizer

_TINY = 1e-30


def spike_rank(shape: tuple[int, ...], rank_fraction: float) -> int:
    """k = max(1, round(rank_fraction * min(m, n))) for a (..., m, n) matrix."""
    return max(1, round(rank_fraction * min(shape[-2], shape[-1])))


def block_power_iteration(M: Tensor, V: Tensor, iters: int, rayleigh_ritz: bool = True) -> tuple[Tensor, Tensor,
                                                                                                  Tensor]:
    """``iters`` block power steps on M (..., m, n) from V (..., n, k): P = M V; U = QR(P); W = M^T U;
    s = ||W columns||; V = W / s. Returns (U (..., m, k) orthonormal, s (..., k), V (..., n, k) unit columns)
    with U diag(s) V^T = U U^T M. Warm-start the next call with the returned V.

    The QR basis U spans the top-k subspace long before its columns align with the individual singular
    vectors (they converge at the rates s_{i+1}/s_i, slow for spikes of similar size), and until they do,
    s are not singular values and V is not orthogonal. ``rayleigh_ritz`` rotates (U, W) by the eigenvectors
    of the k x k matrix W^T W (= U^T M M^T U) so that (U, s, V) are the exact singular triplets of U U^T M.
    """
    for _ in range(iters):  # products in M's dtype (no float32 copy of a low-precision M), the rest in float32
        U = torch.linalg.qr((M @ V.to(M.dtype)).float()).Q
        W = (M.mT @ U.to(M.dtype)).float()
        if rayleigh_ritz:
            _, Z = torch.linalg.eigh((W.mT @ W).double())  # ascending eigenvalues
            Z = Z.flip(-1).to(W.dtype)
            U, W = U @ Z, W @ Z
        s = torch.linalg.vector_norm(W, dim=-2)
        V = W / s.clamp_min(_TINY)[..., None, :]
    return U, s, V


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


class SpikeAware(SpectralOptimizer):
    """The spike-aware optimizer (Huang et al. 2026, arXiv 2602.11185); the rule is in this module's docstring.

    Hidden matrices (leading dims of >2-D tensors are stacks of matrices) take the spike-aware rule;
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
            eigendecomposition; see :func:`block_power_iteration`). False is the quoted Algorithm 1 as is.
        update_scale: the 0.2 in 0.2 lr O / RMS(O). eps: added to RMS(O).
        weight_decay: decoupled weight decay of the hidden matrices, W <- (1 - lr wd) W.
        exact_svd: take the top-k triplets from a full SVD (float32) instead of the power iteration: for
            tests and small models only.
        track_stats: record for :meth:`statistics` (scalar tensors, no host sync) "spike/energy_fraction/<name>"
            = ||U_k s_k V_k^T||_F^2 / ||M||_F^2, the spike's share of the momentum energy (mean over stacked
            matrices).
        adamw_*, fallback, fallback_patterns, nonfinite: see ``SpectralOptimizer``.
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.95, rank_fraction: float = 0.015,
                 power_iters: int = 1, *, cold_power_iters: int = 4, rayleigh_ritz: bool = True,
                 update_scale: float = 0.2, eps: float = 1e-8, weight_decay: float = 0.1, exact_svd: bool = False,
                 track_stats: bool = False,
                 fallback: Iterable[str] = ("vectors", "embeddings", "head"), fallback_patterns: Iterable[str] = (),
                 adamw_lr: float | None = None, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = 0.1, nonfinite: str = "raise") -> None:
        defaults = {"lr": lr, "momentum": momentum, "rank_fraction": rank_fraction, "power_iters": power_iters,
                    "cold_power_iters": cold_power_iters, "rayleigh_ritz": bool(rayleigh_ritz),
                    "update_scale": update_scale, "eps": eps, "weight_decay": weight_decay,
                    "exact_svd": bool(exact_svd)}
        _check_settings(defaults)
        self.track_stats = bool(track_stats)
        super().__init__(params, defaults, fallback=fallback, fallback_patterns=fallback_patterns, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         nonfinite=nonfinite)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it may override any constructor setting of the rule (same checks, by key)."""
        _check_settings(param_group)
        super().add_param_group(param_group)
        for group, name, p in self._spectral_matrices():
            k, q = spike_rank(p.shape, group["rank_fraction"]), min(p.shape[-2:])
            if k >= q:
                raise ValueError(f"rank_fraction={group['rank_fraction']} gives k={k} spike directions for "
                                 f"parameter {name} of shape {tuple(p.shape)}, but k must be < min(m, n) = {q}; "
                                 "lower rank_fraction or route the parameter to AdamW")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        if self.track_stats:
            self._statistics = {}
        return super().step(closure)

    def _spectral_step(self, group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        for name, p in zip(group["param_names"], group["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            m, n = p.shape[-2:]
            k, q = spike_rank(p.shape, group["rank_fraction"]), min(m, n)
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).add_(p.grad)
            if group["exact_svd"]:
                U, s, V = _exact_top(buf.float(), k)
            else:
                cold = "spike_v" not in state
                if cold:
                    gen = torch.Generator(device=p.device).manual_seed(0)
                    state["spike_v"] = torch.randn((*p.shape[:-2], n, k), device=p.device, generator=gen)
                iters = group["cold_power_iters"] if cold else group["power_iters"]
                U, s, V = block_power_iteration(buf, state["spike_v"].float(), iters, group["rayleigh_ritz"])
                state["spike_v"] = V
            energy = torch.linalg.vector_norm(buf, dim=(-2, -1), dtype=torch.float32).square()
            spike_energy = s.square().sum(-1)
            sigma_tail = ((energy - spike_energy).clamp_min(0) / (q - k)).sqrt()
            rms = sigma_tail * math.sqrt(q / (m * n))
            c = group["update_scale"] * lr / (rms + group["eps"])  # (...,): the step is -c O
            if wd != 0:
                p.mul_(1 - lr * wd)
            p.addcmul_(buf, c[..., None, None].to(p.dtype), value=-1.0)
            shrink = (-c[..., None] * (sigma_tail[..., None] - s))[..., :, None] * V.mT  # (..., k, n)
            if p.dim() == 2:
                p.addmm_(U.to(p.dtype), shrink.to(p.dtype))
            else:
                p.add_((U @ shrink).to(p.dtype))
            if self.track_stats:
                self._statistics[f"spike/energy_fraction/{name}"] = (spike_energy / energy.clamp_min(_TINY)).mean()

    def state_bytes(self) -> dict[str, int]:
        """Bytes of optimizer state held for each parameter (momentum + V cache, or AdamW's moments)."""
        out = {}
        for group in self.param_groups:
            for name, p in zip(group["param_names"], group["params"]):
                out[name] = sum(t.numel() * t.element_size() for t in self.state.get(p, {}).values()
                                if isinstance(t, Tensor))
        return out
