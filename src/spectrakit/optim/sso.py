"""SSO, the Spectral Sphere Optimizer, and MuonSphere (Xie et al. 2026, "Controlled LLM Training on Spectral
Sphere", arXiv 2601.08393).

Every hidden "atomic" matrix W (d_out x d_in) lives on the sphere ||W||_2 = R, R = r sqrt(d_out / d_in), and
takes the steepest unit-spectral-norm step tangent to it. Per step and atomic block:

    M <- beta M + (1 - beta) G               (Nesterov input: (1 - beta) G + beta M)
    M_hat = M / ||M||_F
    (sigma, u, v) = top singular triplet of W (warm-started power iteration, float32; its last Rayleigh-Ritz
                    step an SVD, or in a sync-free step the matmul-only top_triplet)
    W <- W R / sigma                          (hard retraction, before the step)
    Theta = u v^T
    lambda* = root of h(lambda) = <Theta, msign(M_hat + lambda Theta)>
    Phi = msign(M_hat + lambda* Theta)        (||Phi||_2 = 1, <Theta, Phi> = 0)
    W <- W - lr R Phi

h is non-decreasing (the derivative of the convex lambda -> ||M_hat + lambda Theta||_*), from -1 to 1, and its
root is found by bracketing then bisection (:func:`spectrakit.linalg.solve_multiplier`). MuonSphere is the
lambda = 0 variant (``solver=None``).

What the hard retraction guarantees: at the start of every step (after the retraction, before the update)
each block has ||W||_2 = R up to the power iteration's accuracy. The update then moves it off the sphere
by at most lr R (Weyl), and, because the step is tangent (<Theta, Phi> = 0 kills the first-order change of
sigma_max), only by O(lr^2) R; the next step's retraction puts it back.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..linalg import msign, solve_multiplier, top_singular
from ..linalg.multiplier import SOLVERS, rank_one_problem, solver_shape
from ._matrices import MatrixViews, check_flatten, flattens, matrix_view, start_block
from ._validate import check_choice, check_positive, check_unit_interval
from .momentum import ema_momentum
from .routing import SPECTRAL
from .spectral_optimizer import SpectralOptimizer, decoupled_step, scalar_lr

RETRACTIONS = ("hard", "dynamic")

_TINY = 1e-30


# --------------------------------------------------------------------------------------- atomic blocks
@dataclass(frozen=True)
class _Segment:
    """``count`` consecutive row blocks of ``rows`` rows each, starting at row ``start``."""

    start: int
    count: int
    rows: int

    def view(self, X: Tensor) -> Tensor:
        """The blocks of X (..., d_out, d_in) as a view of shape (..., count, rows, d_in)."""
        return X.narrow(-2, self.start, self.count * self.rows).unflatten(-2, (self.count, self.rows))


@dataclass
class _Piece:
    """One parameter's run of equal blocks, as the optimizer stacks it with others of the same shape."""

    p: Tensor  # the parameter as the rule sees it (its flattened matrix for a conv kernel)
    state: dict[str, Any]
    seg: _Segment
    index: slice  # the run's block indices in the parameter's solver state
    direction: Tensor  # the momentum direction of the whole parameter

    @property
    def blocks(self) -> int:
        """Blocks in the stack: the run's count times the parameter's leading (stacked-matrix) dims."""
        return self.seg.count * math.prod(self.p.shape[:-2])

    def gather(self, view: Tensor, trailing: int) -> Tensor:
        """A (..., count, *trailing dims) view of this piece flattened to (blocks, *trailing dims)."""
        return view.reshape(self.blocks, *view.shape[view.dim() - trailing:])

    def scatter(self, view: Tensor, values: Tensor) -> None:
        view.copy_(values.reshape(view.shape))


class _Retracted(NamedTuple):
    """A stack of same-shape blocks after the power iteration and the retraction (``SSO._retract``)."""

    pieces: list[_Piece]
    W: Tensor  # (blocks, rows, cols), retracted
    M_hat: Tensor  # normalised momenta, float32
    u: Tensor  # top left singular vectors of W
    V: Tensor  # the power iteration's right vectors (the top one first), the next warm start
    sigma: Tensor  # top singular values before the retraction
    R: float  # the blocks' radius


def atomic_segments(d_out: int, split_sizes: Sequence[int] | None = None, heads: int | None = None,
                    name: str = "parameter") -> list[_Segment]:
    """Split the rows of a d_out x d_in matrix into atomic blocks, grouped into runs of equal size.

    ``split_sizes`` cuts the rows into consecutive chunks (e.g. [d, d, d] for a fused Q/K/V, [f, f] for a
    fused gate/up); ``heads`` then cuts every chunk (or the whole matrix) into that many equal blocks.
    """
    sizes = [d_out] if split_sizes is None else list(split_sizes)
    if sum(sizes) != d_out:
        raise ValueError(f"split_sizes of {name} must sum to its {d_out} rows, got {list(sizes)}")
    blocks: list[int] = []
    for size in sizes:
        h = 1 if heads is None else heads
        if size % h:
            raise ValueError(f"heads={h} must divide every chunk of {name}; a chunk has {size} rows")
        blocks += [size // h] * h
    segments: list[_Segment] = []
    start = 0
    for rows in blocks:
        last = segments[-1] if segments else None
        if last is not None and last.rows == rows:
            segments[-1] = _Segment(last.start, last.count + 1, rows)
        else:
            segments.append(_Segment(start, 1, rows))
        start += rows
    return segments


def _check_split_options(split_sizes: object, heads: object) -> None:
    if split_sizes is not None:
        if isinstance(split_sizes, (str, bytes)) or not isinstance(split_sizes, Sequence) or not split_sizes or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in split_sizes):
            raise ValueError(f"split_sizes must be None or a non-empty sequence of integers >= 1, got {split_sizes!r}")
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int) or heads < 1):
        raise ValueError(f"heads must be None or an integer >= 1, got {heads!r}")


def radius(rows: int, cols: int, radius_scale: float) -> float:
    """R = radius_scale * sqrt(d_out / d_in), the spectral muP radius of a d_out x d_in block."""
    return radius_scale * math.sqrt(rows / cols)


# ----------------------------------------------------------------------------------------- initialization
@torch.no_grad()
def spectral_init_(params: nn.Module | Iterable[Tensor], radius_scale: float = 1.0, *,
                   split_sizes: Sequence[int] | None = None, heads: int | None = None,
                   flatten: bool | None = None) -> None:
    """Spectral muP initialization W <- R W / ||W||_2, R = radius_scale sqrt(d_out / d_in), in place.

    ``params``: a model (its hidden matrices, routed as SSO routes them: embeddings, the output head and
    vectors are left alone) or an iterable of tensors (every tensor with >= 2 dims). Each atomic block
    (``split_sizes``/``heads``/``flatten`` as in :class:`SSO`: conv kernels are flattened to (out, in * kernel),
    other leading dims are stacked matrices) is put on its own sphere. The norm is exact (an SVD in float32),
    as befits a one-off initialization.
    """
    check_positive(radius_scale, "radius_scale")
    _check_split_options(split_sizes, heads)
    check_flatten(flatten)
    if isinstance(params, nn.Module):
        probe = MuonSphere(params, lr=0.0, flatten=flatten)
        tensors = [(p, flattens(p, group["flatten"])) for group in probe.param_groups if group["rule"] == SPECTRAL
                   for p in group["params"]]
    else:
        tensors = [(p, flattens(p, flatten)) for p in params if isinstance(p, Tensor) and p.dim() >= 2]
    for p, flat in tensors:
        W = matrix_view(p, flat)
        for seg in atomic_segments(W.shape[-2], split_sizes, heads):
            block = seg.view(W)
            sigma = torch.linalg.matrix_norm(block.float(), ord=2).clamp_min(_TINY)
            block.mul_((radius(seg.rows, W.shape[-1], radius_scale) / sigma)[..., None, None].to(p.dtype))
        if W.data_ptr() != p.data_ptr():
            p.copy_(W.view(p.shape))


# ------------------------------------------------------------------------------------------ optimizers
_INTEGER_SETTINGS = ("solver_max_iter", "solver_bracket_steps", "batch", "power_iters", "power_rank",
                     "cold_power_iters", "ns_steps")
_MSIGN_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


#: former setting name -> its name now (one spelling per concept across optimizers: Muon's ns_*)
_RENAMED = {"msign_steps": "ns_steps", "msign_dtype": "ns_dtype"}


def _renamed(old: str, old_value: Any, new: str, value: Any) -> Any:
    """``value``, or ``old_value`` given under the former name ``old`` (with a DeprecationWarning)."""
    if old_value is None:
        return value
    warnings.warn(f"SSO: {old} is now called {new}", DeprecationWarning, stacklevel=3)
    return old_value


def _check_settings(settings: dict[str, Any]) -> None:
    """Check the rule's settings present in ``settings`` (constructor defaults or a param group), by key."""
    if "momentum" in settings:
        check_unit_interval(settings["momentum"], "momentum")
    for key in ("nesterov", "retraction_rate_times_lr", "solver_sync"):
        if not isinstance(settings.get(key, False), bool):
            raise ValueError(f"{key} must be a bool, got {settings[key]!r}")
    for key in ("radius_scale", "retraction_rate", "solver_tol"):
        if key in settings:
            check_positive(settings[key], key)
    if "retraction" in settings:
        check_choice(settings["retraction"], "retraction", RETRACTIONS)
    if "solver" in settings:
        check_choice(settings["solver"], "solver", (*SOLVERS, None))
    for key in _INTEGER_SETTINGS:
        value = settings.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {value!r}")
    if settings.get("ns_dtype", torch.float32) not in _MSIGN_DTYPES:
        raise ValueError(f"ns_dtype must be a floating torch dtype, got {settings['ns_dtype']!r}")
    _check_split_options(settings.get("split_sizes"), settings.get("heads"))
    check_flatten(settings.get("flatten"))


class SSO(MatrixViews, SpectralOptimizer):
    """Spectral Sphere Optimizer (Xie et al. 2026, arXiv 2601.08393): steepest descent on ||W||_2 = R.

    Hidden matrices take the rule in this module's docstring; embeddings, the output head and vectors go to
    the internal AdamW rule (wd 0.1, betas (0.9, 0.95)) unless routed otherwise (see ``SpectralOptimizer``).
    A convolution kernel (out, in, *kernel) is one (out, in * prod(kernel)) matrix on one sphere (as in Muon
    implementations); other parameters with more than 2 dims are stacks of matrices (e.g. MoE experts
    (E, d_out, d_in)): each trailing matrix is its own sphere. ``flatten`` decides which is which (see
    ``spectrakit.optim._matrices``), and the routing report says for each such parameter.

    Args:
        params: a model, tensors, (name, tensor) pairs or param groups. A group may set ``split_sizes``
            (row chunks of a fused matrix, e.g. [d, d, d] for Q/K/V or [f, f] for gate/up) and ``heads``
            (cut each chunk into that many equal row blocks); every block is then its own sphere. A group may
            also override every other setting of the rule below (all but ``track_stats`` and the ``adamw_*``,
            ``fallback*`` and ``nonfinite`` options): they are param-group keys, checked as here.
        lr: step length; the update is lr * R * Phi.
        momentum, nesterov: EMA momentum coefficient beta (default 0.9) and the Nesterov input.
        radius_scale: r in R = r sqrt(d_out / d_in) (the paper's sweep found r = 2 slightly better).
        weight_decay: decoupled decay of hidden matrices, W <- (1 - lr wd) W. A no-op under hard retraction
            (the retraction undoes any rescaling); it only matters with ``retraction="dynamic"``.
        retraction: "hard" (W <- W R / sigma before the step) or "dynamic" (W <- (1 + a sign(R - sigma)) W,
            the authors' code; a = ``retraction_rate``, multiplied by lr when ``retraction_rate_times_lr``,
            the paper's variant).
        solver_tol, solver_max_iter, solver_bracket_steps: |h| tolerance, bisection and doubling budgets.
        solver_sync: one host sync per solver round: each round evaluates only the blocks not yet converged,
            and the solver ends when all are; False runs the full budget of rounds on every block with no host
            sync. Either way each msign runs on q x (q + 1) matrices for blocks with q + 1 <= 0.8 max(m, n)
            and square ones (q = min(m, n); ``linalg.multiplier.rank_one_problem``).
        power_iters: power iterations per step (warm-started from the previous step's vector);
            the first step, which has no vector yet, runs ``cold_power_iters``.
        batch: the most blocks stacked into one multiplier solve. Blocks whose problems have the same shape
            (``linalg.multiplier.solver_shape``: e.g. the q x (q + 1) of every wide, tall or square block with
            min(m, n) = q, across heads, chunks and parameters of a group) are solved together: one batched msign
            per solver round and one host sync per round for all of them (and one power iteration per block
            shape).
        ns_steps, ns_dtype: Polar Express steps (8) and compute dtype of msign (Muon's spelling; the former
            ``msign_steps`` / ``msign_dtype`` still work, with a DeprecationWarning). float32 by default:
            in bfloat16 the rounding of M_hat + lambda Theta and of Phi makes h noisy at the 2e-4 level, and the
            solver then runs to its budget (measured: ~16 msign calls per block and step instead of ~13).
        solver: "bisection" (the paper's, the default) or "illinois" (bracketing by secant extrapolation, never
            slower than the doubling, and the bracket shrunk by false position: the same root to the same
            tolerance in about a third of the msign calls, see BENCHMARKS.md), or None (lambda = 0).
        track_stats: record for :meth:`statistics` (scalar tensors, no host sync) per parameter the mean over its
            blocks of the pre-retraction sigma ("sso/sigma/<name>") and of lambda* ("sso/lambda/<name>"), and
            per step the msign calls ("sso/msign_calls"), multiplier solves ("sso/solves", one per stack of
            blocks, see ``batch``), blocks that fell back to lambda = 0 ("sso/fallbacks") and the largest |<Theta, Phi>|
            ("sso/max_abs_h", the tangency achieved).
        flatten: None (default): conv kernels (tensors with >= 4 dims, and the 3-D weights of a model's
            ``nn.Conv1d`` modules) are flattened, other tensors with 3 dims are stacks; True: every parameter
            with more than 2 dims is flattened to (shape[0], rest); False: none is.
        adamw_lr: learning rate of the AdamW groups (3e-4 by default, as for Muon: ``lr`` is a spectral step
            length, far too large for AdamW; None = the group's lr).
        adamw_*, fallback, fallback_patterns, nonfinite, sync_free: see ``SpectralOptimizer``.

    Example (each attention head of separate q/k/v projections its own sphere, as in the paper)::

        heads = [(n, p) for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight",
                                                                            "v_proj.weight"))]
        rest = [(n, p) for n, p in model.named_parameters() if not n.endswith(("q_proj.weight",
                                                                               "k_proj.weight", "v_proj.weight"))]
        opt = SSO([{"params": heads, "heads": n_heads}, {"params": rest}], lr=0.02)
        spectral_init_(model)  # hidden matrices on their spheres before the first forward pass,
        spectral_init_([p for _, p in heads], heads=n_heads)  # then each head on its own
    """

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.9, nesterov: bool = True, *,
                 radius_scale: float = 1.0, weight_decay: float = 0.0, retraction: str = "hard",
                 retraction_rate: float = 0.05, retraction_rate_times_lr: bool = False,
                 solver: str | None = "bisection", solver_tol: float = 2e-4, solver_max_iter: int = 20,
                 solver_bracket_steps: int = 10, solver_sync: bool = True, batch: int = 64, power_iters: int = 10,
                 power_rank: int = 4, cold_power_iters: int = 50, ns_steps: int = 8,
                 ns_dtype: torch.dtype = torch.float32, track_stats: bool = False,
                 split_sizes: Sequence[int] | None = None, heads: int | None = None, flatten: bool | None = None,
                 fallback: Iterable[str] = ("vectors", "embeddings", "head"), fallback_patterns: Iterable[str] = (),
                 adamw_lr: float | None = 3e-4, adamw_betas: tuple[float, float] = (0.9, 0.95),
                 adamw_eps: float = 1e-8, adamw_weight_decay: float | None = 0.1, nonfinite: str | None = None,
                 sync_free: bool | None = None,
                 msign_steps: int | None = None, msign_dtype: torch.dtype | None = None) -> None:
        ns_steps = _renamed("msign_steps", msign_steps, "ns_steps", ns_steps)
        ns_dtype = _renamed("msign_dtype", msign_dtype, "ns_dtype", ns_dtype)
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "radius_scale": radius_scale,
                    "weight_decay": weight_decay, "retraction": retraction, "retraction_rate": retraction_rate,
                    "retraction_rate_times_lr": bool(retraction_rate_times_lr), "solver": solver,
                    "solver_tol": solver_tol, "solver_max_iter": solver_max_iter,
                    "solver_bracket_steps": solver_bracket_steps, "solver_sync": bool(solver_sync), "batch": batch,
                    "power_iters": power_iters, "power_rank": power_rank, "cold_power_iters": cold_power_iters,
                    "ns_steps": ns_steps, "ns_dtype": ns_dtype, "split_sizes": split_sizes, "heads": heads,
                    "flatten": flatten}
        _check_settings(defaults)
        self.track_stats = bool(track_stats)
        self.msign_calls = 0  # msign evaluations of the last step (each batched over a stack's blocks)
        self.solves = 0  # multiplier solves of the last step (one per stack of blocks of one solver shape)
        super().__init__(params, defaults, fallback=fallback, fallback_patterns=fallback_patterns, adamw_lr=adamw_lr,
                         adamw_betas=adamw_betas, adamw_eps=adamw_eps, adamw_weight_decay=adamw_weight_decay,
                         nonfinite=nonfinite, sync_free=sync_free)

    #: a group may override any constructor setting of the rule (the same checks, by key)
    _check_settings = staticmethod(_check_settings)

    def _initial_state(self, key: str, value: Tensor) -> Tensor:
        """The power iteration's start block is a seeded Gaussian block (the rest starts at zero)."""
        return start_block(value.shape, value.device) if key == "power_v" else super()._initial_state(key, value)

    def _check_matrix(self, group: dict[str, Any], name: str, W: Tensor) -> None:
        atomic_segments(W.shape[-2], group["split_sizes"], group["heads"], name)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (groups saved with the former msign_steps / msign_dtype keys are read as ns_*)."""
        groups = [{_RENAMED.get(k, k): v for k, v in g.items()} for g in state_dict["param_groups"]]
        super().load_state_dict({**state_dict, "param_groups": groups})
        for state in self.state.values():  # torch casts state to the parameter's dtype; the solver's is float32
            if not isinstance(state, dict):  # torch allows entries other than per-parameter dicts
                continue
            for key in ("power_v", "lambda", "sigma"):
                if key in state:
                    state[key] = state[key].float()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        self.msign_calls = self.solves = 0
        loss = super().step(closure)  # (which starts the statistics empty)
        if self.track_stats:
            self._statistics["sso/msign_calls"] = torch.tensor(float(self.msign_calls))
            self._statistics["sso/solves"] = torch.tensor(float(self.solves))
        return loss

    def _spectral_step(self, group: dict[str, Any]) -> None:
        lr, wd = scalar_lr(group["lr"]), group["weight_decay"]
        buckets: dict[tuple, list[_Piece]] = {}
        updated = []
        copies = []  # (parameter, its matrix) where the matrix is a copy (a kernel whose layout has no flat view)
        for name, p in zip(group["param_names"], group["params"]):
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            direction = ema_momentum(p.grad, state["momentum_buffer"], group["momentum"], group["nesterov"])
            if wd != 0:
                p.mul_(1 - lr * wd)
            flat = flattens(p, group["flatten"])
            W, direction = matrix_view(p, flat), matrix_view(direction, flat)
            if W.data_ptr() != p.data_ptr():
                copies.append((p, W))
            segments = atomic_segments(W.shape[-2], group["split_sizes"], group["heads"], name)
            cold = "power_v" not in state
            if cold:
                blocks = sum(seg.count for seg in segments)
                rank = min(group["power_rank"], W.shape[-1], *(seg.rows for seg in segments))
                state["power_v"] = start_block((*W.shape[:-2], blocks, W.shape[-1], rank), p.device)
                state["lambda"] = torch.zeros((*W.shape[:-2], blocks), device=p.device)
                state["sigma"] = torch.zeros((*W.shape[:-2], blocks), device=p.device)
            first = 0
            for seg in segments:
                piece = _Piece(W, state, seg, slice(first, first + seg.count), direction)
                first += seg.count
                key = (solver_shape(seg.rows, W.shape[-1]), p.dtype, p.device, cold)
                buckets.setdefault(key, []).append(piece)
            updated.append((name, state))
        for (*_, cold), pieces in buckets.items():
            chunk: list[_Piece] = []
            for piece in pieces:
                if chunk and sum(c.blocks for c in chunk) + piece.blocks > group["batch"]:
                    self._solve_chunk(chunk, group, cold)
                    chunk = []
                chunk.append(piece)
            self._solve_chunk(chunk, group, cold)
        for p, W in copies:
            p.copy_(W.view(p.shape))
        if self.track_stats:
            for name, state in updated:
                self._statistics[f"sso/sigma/{name}"] = state["sigma"].mean()
                if group["solver"] is not None:
                    self._statistics[f"sso/lambda/{name}"] = state["lambda"].mean()

    def _solve_chunk(self, chunk: list[_Piece], group: dict[str, Any], cold: bool) -> None:
        """Retract and step the blocks of ``chunk`` (one solver shape, see ``solver_shape``) with ``group``'s
        settings: one power iteration per block shape, one multiplier solve for all of them, then the results are
        written back to each parameter."""
        shapes: dict[tuple[int, int, int], list[_Piece]] = {}
        for piece in chunk:
            shapes.setdefault((piece.seg.rows, piece.p.shape[-1], piece.state["power_v"].shape[-1]), []).append(piece)
        parts = [self._retract(pieces, group, cold) for pieces in shapes.values()]
        msign_fn = partial(msign, coefficients="polar_express", steps=group["ns_steps"], dtype=group["ns_dtype"])
        if group["solver"] is None:
            phis = [msign_fn(part.M_hat) for part in parts]
            self.msign_calls += len(parts)
        else:
            phis = self._solve(parts, group, msign_fn)
        lr = scalar_lr(group["lr"])
        for part, phi in zip(parts, phis):
            decoupled_step(part.W, phi.to(part.W.dtype), lr, 0.0, part.R)
            sizes = [c.blocks for c in part.pieces]
            for piece, w, vs, sg in zip(part.pieces, part.W.split(sizes), part.V.split(sizes),
                                        part.sigma.split(sizes)):
                piece.scatter(piece.seg.view(piece.p), w)
                piece.scatter(piece.state["power_v"][..., piece.index, :, :], vs)
                piece.scatter(piece.state["sigma"][..., piece.index], sg)

    def _retract(self, pieces: list[_Piece], group: dict[str, Any], cold: bool) -> _Retracted:
        """The stacked blocks of ``pieces`` (one block shape) after one power iteration and the retraction, with
        their normalised momenta."""
        W = torch.cat([piece.gather(piece.seg.view(piece.p), 2) for piece in pieces])
        M = torch.cat([piece.gather(piece.seg.view(piece.direction), 2) for piece in pieces]).float()
        V0 = torch.cat([piece.gather(piece.state["power_v"][..., piece.index, :, :], 2) for piece in pieces])
        iters = group["cold_power_iters"] if cold else group["power_iters"]
        U, S, V = top_singular(W, V0.shape[-1], iters=iters, v0=V0, sync_free=self._sync_free_step)
        sigma = S[..., 0]
        R = radius(W.shape[-2], W.shape[-1], group["radius_scale"])
        if group["retraction"] == "hard":
            W.mul_((R / sigma.clamp_min(_TINY))[..., None, None].to(W.dtype))
        else:
            lr = scalar_lr(group["lr"])
            rate = group["retraction_rate"] * (lr if group["retraction_rate_times_lr"] else 1.0)
            W.mul_((1 + rate * torch.sign(R - sigma))[..., None, None].to(W.dtype))
        M_hat = M / torch.linalg.matrix_norm(M, keepdim=True).clamp_min(_TINY)
        return _Retracted(pieces, W, M_hat, U[..., 0], V, sigma, R)

    def _solve(self, parts: list[_Retracted], group: dict[str, Any], msign_fn: Callable[[Tensor], Tensor]
               ) -> list[Tensor]:
        """Phi of every part's blocks from ONE multiplier solve over all of them (their ``rank_one_problem`` s
        share a shape), the roots written to the pieces' state."""
        problems = [rank_one_problem(part.M_hat, part.u, part.V[..., 0]) for part in parts]
        chunk = [piece for part in parts for piece in part.pieces]  # in the stack's order
        lam0 = torch.cat([piece.gather(piece.state["lambda"][..., piece.index], 0) for piece in chunk])
        stacked = (torch.cat(tensors) if len(parts) > 1 else tensors[0] for tensors in
                   ([pr.M for pr in problems], [pr.Theta for pr in problems]))
        answer = solve_multiplier(*stacked, lam0, method=group["solver"], tol=group["solver_tol"],
                                  max_iter=group["solver_max_iter"], bracket_steps=group["solver_bracket_steps"],
                                  msign_fn=msign_fn, sync=group["solver_sync"] and not self._sync_free_step)
        self.msign_calls += answer.calls
        self.solves += 1
        for piece, lam in zip(chunk, answer.lam.split([c.blocks for c in chunk])):
            piece.scatter(piece.state["lambda"][..., piece.index], lam)
        if self.track_stats:
            stats = self._statistics
            stats["sso/fallbacks"] = stats.get("sso/fallbacks", 0) + answer.fallback.sum().float()
            worst = answer.h.abs().amax().float()
            stats["sso/max_abs_h"] = torch.maximum(stats.get("sso/max_abs_h", worst), worst)
        phis = answer.phi.split([part.W.shape[0] for part in parts])
        return [problem.expand(phi) for problem, phi in zip(problems, phis)]


class MuonSphere(SSO):
    """SSO with lambda = 0 (Xie et al. 2026): the retraction and the Muon step lr R msign(M_hat), no solver."""

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.9, nesterov: bool = True,
                 **kwargs: Any) -> None:
        if "solver" in kwargs:
            raise ValueError("MuonSphere has no solver (lambda = 0); use SSO(..., solver=...) instead")
        super().__init__(params, lr, momentum, nesterov, solver=None, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if param_group.get("solver") is not None:
            raise ValueError("MuonSphere has no solver (lambda = 0): a param group cannot set solver; "
                             "use SSO(..., solver=...) instead")
        super().add_param_group(param_group)
