"""Spectral clipping maps on (..., m, n) tensors: soft_clip (SPECTRA's H_c) and hard_clip.

soft:  sigma -> sigma / sqrt(1 + sigma^2/c^2),  H_c(X) = X (I + X^T X / c^2)^{-1/2}
hard:  sigma -> min(sigma, c)
1-D inputs use the vector rule (the 1 x n case): u / sqrt(1 + ||u||^2/c^2) and u * min(1, c/||u||).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _sharded
from ._validate import batch_threshold, check_choice, check_positive_int, check_tensor, check_threshold
from .exact import spectral_map_svd_with_norm
from .fast_clip import soft_clip_fast
from .hard_accel import hard_clip_restart
from .newton_schulz import soft_clip_newton_schulz
from .polar_clip import hard_clip_polar, soft_clip_polar
from .restart import soft_clip_restart

SOFT_METHODS = ("auto", "polar", "newton_schulz", "svd")
HARD_METHODS = ("auto", "polar", "svd")
_POLAR_DTYPES = (torch.float32, torch.float64)
#: "auto" uses the exact SVD (float64) up to this min(m, n) on CPU, where it was measured as fast or faster
#: (2 shared AVX2 cores; soft clip: svd ~ polar from 64 to 384; hard clip: svd 4-8x faster up to 384, polar
#: ~2x faster at 768, see BENCHMARKS.md); the polar iteration above it and always on accelerators.
_AUTO_SVD_MAX_SIDE_CPU = {"soft": 64, "hard": 512}


def _vector_rule(u: Tensor, c: float | Tensor, hard: bool) -> tuple[Tensor, Tensor]:
    uf = u.float()
    norm = uf.norm(dim=-1, keepdim=True)
    cc = c.to(u.device, torch.float32)[..., None] if isinstance(c, Tensor) else c
    scale = torch.clamp(cc / norm.clamp_min(1e-30), max=1.0) if hard else torch.rsqrt(1 + (norm / cc) ** 2)
    return (uf * scale).to(u.dtype), norm.squeeze(-1)


def _svd_clip(X: Tensor, c: float | Tensor, hard: bool) -> tuple[Tensor, Tensor]:
    """Exact clip through a float64 SVD, with sigma_max as the bound."""
    c_ = c.to(X.device, torch.float64)[..., None] if isinstance(c, Tensor) else c
    f = (lambda s: torch.minimum(s, torch.as_tensor(c_, dtype=s.dtype, device=s.device))) if hard else \
        (lambda s: s / torch.sqrt(1 + (s / c_) ** 2))
    Y, smax = spectral_map_svd_with_norm(X, f)
    return Y, smax.float()


def _resolve_method(method: str, X: Tensor, kind: str) -> str:
    if method != "auto":
        return method
    small = min(X.shape[-2:]) <= _AUTO_SVD_MAX_SIDE_CPU[kind] and X.device.type == "cpu"
    return "svd" if small else "polar"


def _check_polar_dtype(dtype: torch.dtype | None, kind: str) -> None:
    allowed = _POLAR_DTYPES + ((torch.bfloat16,) if kind == "soft" else ())
    if dtype is not None and dtype not in allowed:
        raise ValueError(f"dtype for method 'polar' must be one of {allowed} (or None), got {dtype}")


def _run_polar(kind: str, Xw: Tensor, c: float | Tensor, steps: int | None,
               dtype: torch.dtype | None, adaptive: bool | None) -> tuple[Tensor, Tensor]:
    """Flatten the batch, cast to the compute dtype, call a polar_clip function, restore shape and dtype.

    The accelerator policy (float32 products, no host read unless ``adaptive``: ``restart.soft_clip_restart``,
    ``hard_accel.hard_clip_restart``) serves dtype float32, and dtype None when not ``adaptive`` (the
    accelerator default) on float32/16 inputs; the soft clip's bfloat16 is ``fast_clip.soft_clip_fast``;
    otherwise ``polar_clip``'s float64/mixed policy.
    """
    _check_polar_dtype(dtype, kind)
    batch_shape, (m, n) = Xw.shape[:-2], Xw.shape[-2:]
    if Xw.numel() == 0:
        return Xw.clone(), torch.zeros(batch_shape, dtype=torch.float32, device=Xw.device)
    if adaptive is None:
        adaptive = Xw.device.type == "cpu"
    Xf = Xw.reshape(-1, m, n)
    if Xf.dtype not in _POLAR_DTYPES:
        Xf = Xf.float()
    accelerator = dtype in (torch.float32, torch.bfloat16) or (dtype is None and not adaptive
                                                               and Xf.dtype != torch.float64)
    cdtype = torch.float32 if accelerator else torch.float64
    cf = (c.to(device=Xw.device, dtype=cdtype).expand(batch_shape) if isinstance(c, Tensor)
          else torch.full(batch_shape, float(c), dtype=cdtype, device=Xw.device)).reshape(-1)
    if accelerator and kind == "hard":
        Y, bound = hard_clip_restart(Xf.float(), cf, steps=steps, adaptive=adaptive)
    elif dtype == torch.bfloat16:
        Y, bound = soft_clip_fast(Xf, cf, steps=steps)
    elif accelerator:
        Y, bound = soft_clip_restart(Xf.float(), cf, steps=steps, adaptive=adaptive)
    else:
        fn = soft_clip_polar if kind == "soft" else hard_clip_polar
        Y, bound = fn(Xf, cf, steps=steps, adaptive=adaptive, dtype=dtype)
    return Y.reshape(Xw.shape).to(Xw.dtype), bound.reshape(batch_shape).float()


def _clip(public: Callable[..., Any], kind: str, X: Tensor, c: float | Tensor, method: str, steps: int | None,
          dtype: torch.dtype | None, return_bound: bool, adaptive: bool | None) -> Tensor | tuple[Tensor, Tensor]:
    """The body of soft_clip / hard_clip (``kind`` "soft" / "hard"; ``public`` is the function itself, which the
    sharded path calls back): validation, the vector rule, the wide orientation and the method dispatch."""
    if _sharded.is_sharded(X):  # FSDP2 / tensor-parallel input: evaluated by spectrakit.distributed (see _sharded)
        return _sharded.call(public, X, c, method=method, steps=steps, dtype=dtype, return_bound=return_bound,
                             adaptive=adaptive)
    check_tensor(X, "X", min_dim=1)
    check_threshold(c, "c")
    check_positive_int(steps, "steps")
    check_choice(method, "method", SOFT_METHODS if kind == "soft" else HARD_METHODS)
    hard = kind == "hard"
    if X.dim() == 1:
        Y, norm = _vector_rule(X, c, hard=hard)
        return (Y, norm) if return_bound else Y
    method = _resolve_method(method, X, kind)
    transposed = X.shape[-2] > X.shape[-1]
    Xw = X.mT if transposed else X
    if method == "svd":
        Y, bound = _svd_clip(Xw, c, hard=hard)
    elif method == "polar":
        Y, bound = _run_polar(kind, Xw, c, steps, dtype, adaptive)
    else:
        cb = batch_threshold(c, Xw, dtype or torch.bfloat16)
        Y, bound = soft_clip_newton_schulz(Xw, cb, steps=steps or 10, dtype=dtype or torch.bfloat16)
    Y = (Y.mT if transposed else Y).to(X.dtype)
    return (Y, bound) if return_bound else Y


def soft_clip(X: Tensor, c: float | Tensor, *, method: str = "auto", steps: int | None = None,
              dtype: torch.dtype | None = None, return_bound: bool = False,
              adaptive: bool | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """SPECTRA's soft spectral clip H_c(X) = X (I + X^T X / c^2)^{-1/2} of each trailing matrix.

    Singular values map sigma -> sigma / sqrt(1 + sigma^2/c^2) (Jiang, Semenov, Stich 2026, arXiv 2603.14315);
    H_{tc}(tX) = t H_c(X). "polar" computes H_c(X) = c * top rows of msign([X/c; I]) with Polar-Express
    quintics fitted to the known lower end of that stack's spectrum, in the min(m, n)-sized Gram space
    (see spectrakit.linalg.polar_clip); "newton_schulz" is the authors' coupled iteration (10 steps, bfloat16
    by default; float32 with dtype=torch.float32), accurate only while sigma_max/c <~ 10.

    Args:
        X: (..., m, n) floating tensor (float32/bfloat16/float16/float64); 1-D uses the vector rule.
        c: threshold > 0, a float or a tensor of shape X.shape[:-2] (broadcast over the batch). Tensor
            values are not checked (that would synchronise); c <= 0 there gives undefined results.
        method: "auto" | "polar" | "svd" (exact, float64) | "newton_schulz". "auto" is the exact SVD on CPU
            for min(m, n) <= 64 (soft) / 512 (hard), where it was measured as fast or faster, else "polar".
        steps: iteration count (default: chosen per call, see ``adaptive``).
        dtype: compute dtype of the iteration. "polar": None (default), float32, bfloat16 or float64.
            float32: the accelerator policy (spectrakit.linalg.restart): float32 products only, a Gram phase,
            one restart from the stacked matrix and a Cholesky-factor phase; measured <= 4.2e-4 relative
            error vs float64 SVD for sigma_max/c <= 3e3 and <= 7.5e-3 at 1e4 (also with split-precision 3xTF32
            products; plain TF32 products miss 1e-3, so keep torch's float32 matmul precision at "highest"); beyond 1e4
            finite, inaccurate in its small singular values, with its top singular value within 1e-3 of c.
            bfloat16: the fast mode (spectrakit.linalg.fast_clip): bfloat16 products only, 3 Polar Express
            steps, ~0.4x the authors' method's FLOPs and about its accuracy (~5e-3 up to sigma_max/c = 1,
            ~5e-2 at 10, ~0.45 at 100), finite at every ratio, spectral norm within ~6% of c (bfloat16
            rounding). ``steps`` counts its steps.
            None = float32 as above when not ``adaptive`` (the accelerator default); with ``adaptive`` (the
            CPU default) float64 (forming X X^T squares the condition number) or float32 where a
            power-iteration estimate of the effective ratio allows it
            (per matrix of a stack; sqrt(kappa - 1), kappa the condition number of I + X X^T/c^2 from trace
            bounds and Cholesky certificates on its smallest eigenvalue: sigma_max/c unless the spectrum is
            nearly flat; <= 16: all float32; <= 200: the float32 X X^T, Cholesky factor in float64, float32
            iteration on the factor; above: float64 throughout), with a float64 redo if the computed bounds
            show the estimate was wrong. Measured: <= 1e-3 vs float64 SVD for sigma_max/c in [1e-2, 1e4],
            any scale of X. float64 inputs stay float64 with dtype None.
        return_bound: also return an upper bound (float32, shape X.shape[:-2]) on sigma_max that the method
            computes anyway ("polar": from min(Gershgorin(X X^T), ||(X X^T)^2||_F^(1/2)), within a factor
            rank^(1/4); "svd": exact; 1-D: the norm). No host synchronisation.
        adaptive: "polar" only: choose the number of steps (and, for dtype=None, the precision) from the
            computed bounds on the spectrum of I + X X^T/c^2 (and a power-iteration estimate; a nearly flat
            spectrum takes one step, a narrow one such as sigma_max/c <~ 2 one fitted polynomial with fewer
            products than the schedule); this reads a few scalars on the host. None
            (default) = True on CPU, where such reads cost nothing, and False on accelerators: then the
            float32 accelerator policy runs a fixed schedule covering sigma_max/c <= 3e3 exactly (8 steps), with no
            host read, no float64 and no copy from the host (torch.compile fullgraph-friendly).
            ``adaptive=False`` selects that same path on the CPU.

    Returns the clipped tensor in X's dtype (and the bound when asked). A zero matrix maps to zero; NaN in
    gives NaN out. Bad arguments raise TypeError/ValueError naming the argument.
"""
    return _clip(soft_clip, "soft", X, c, method, steps, dtype, return_bound, adaptive)


def hard_clip(X: Tensor, c: float | Tensor, *, method: str = "auto", steps: int | None = None,
              dtype: torch.dtype | None = None, return_bound: bool = False,
              adaptive: bool | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Hard spectral clip sigma -> min(sigma, c) of each trailing matrix.

    "polar" uses msign-only formulas (Jianlin Su, kexue.fm/archives/11006, 11059):
    hard_clip_c(X) = c mclip(X/c), mclip(M) = 1/2 [(I + S) msign(M) + (I - S) M], S = sign(M M^T - I),
    all evaluated in the min(m, n)-sized Gram space (see spectrakit.linalg.polar_clip); the accelerator path
    (float32, see ``dtype``) clips the soft clip's result instead (spectrakit.linalg.hard_accel). Singular values
    within 2e-4 c of c may be clipped only partly (relative error <= 1e-4 there).

    Args:
        X: (..., m, n) floating tensor (float32/bfloat16/float16/float64); 1-D uses the vector rule.
        c: threshold > 0, a float or a tensor of shape X.shape[:-2] (broadcast over the batch). Tensor
            values are not checked (that would synchronise); c <= 0 there gives undefined results.
        method: "auto" | "polar" | "svd" (exact, float64). "auto" is the exact SVD on CPU
            for min(m, n) <= 64 (soft) / 512 (hard), where it was measured as fast or faster, else "polar".
        steps: iteration count (default: chosen per call, see ``adaptive``).
        dtype: compute dtype of the iteration. "polar": None (default), float32 or float64. float32: the
            accelerator policy (spectrakit.linalg.hard_accel): float32 products only, the accelerator soft clip
            H = H_c(X), then hard_c(X) = (I/2 + |H H^T/c^2 - I/2|)^{-1/2} H from well-conditioned matrices;
            measured relative error vs float64 SVD <= 3e-6 for sigma_max/c <= 10, <= 1.8e-4 at 1e3,
            <= 7.6e-4 at 1e4 (flat, spiky, logspace and rank-deficient spectra up to 768 x 3072, any scale of
            X; also with split-precision 3xTF32 products; plain TF32 products stay finite but miss 1e-3, so
            keep torch's float32 matmul precision at "highest"), finite and clipped beyond. None = float32 as
            above when not ``adaptive`` (the accelerator default); with ``adaptive`` (the CPU default) float64
            (forming X X^T squares the condition number) or float32 where a power-iteration estimate of
            sigma_max/c is <= 16 (per matrix of a stack), with a float64 redo if the computed bound shows the
            estimate was wrong:
            <= 1e-3 for sigma_max/c in [1e-2, 1e4]. float64 inputs stay float64 with dtype None. bfloat16 is
            not offered: on the CPU this was measured on (2 AVX2 cores, no bf16 matmul units) bf16 matmuls
            are ~20-300x slower than float32, and it would miss 1e-3.
        return_bound: also return an upper bound (float32, shape X.shape[:-2]) on sigma_max that the method
            computes anyway ("polar": from min(Gershgorin(X X^T), ||(X X^T)^2||_F^(1/2)), within a factor
            rank^(1/4); "svd": exact; 1-D: the norm). No host synchronisation.
        adaptive: "polar" only: choose the number of steps (and, for dtype=None, the precision) from the
            computed bound and a power-iteration estimate; this reads a few scalars on the host. None
            (default) = True on CPU, where such reads cost nothing, and False on accelerators: then the
            float32 accelerator policy runs fixed schedules covering sigma_max/c <= 1e4, with no host read,
            no float64 and no copy from the host (torch.compile fullgraph-friendly); 2.1-2.2x the matmul FLOPs
            of the accelerator soft clip. ``adaptive=False`` selects that same path on the CPU.

    Returns the clipped tensor in X's dtype (and the bound when asked). A zero matrix maps to zero; NaN in
    gives NaN out. Bad arguments raise TypeError/ValueError naming the argument.
"""
    return _clip(hard_clip, "hard", X, c, method, steps, dtype, return_bound, adaptive)
