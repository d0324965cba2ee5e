"""The matrix sign (polar factor) msign(X) = U V^T by odd polynomial iterations.

Each step is the odd quintic p(X) = a X + b (X X^T) X + c (X X^T)^2 X applied in the wide orientation
(rows <= cols, so the Gram matrix X X^T is the smaller one), after scaling X so that ||X||_2 <= 1.
X X^T and its square are symmetric: ``symmetric_matmul`` computes only their lower block triangles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _sharded
from ._validate import check_positive_int, check_tensor
from .capability import fast_bfloat16_matmul
from .symmetric import gram, symmetric_addmm

Coefficients = Sequence[tuple[float, float, float]]

#: Keller Jordan's Muon quintic (github.com/KellerJordan/Muon). 5 steps push the singular values into
#: roughly [0.7, 1.2]; it does not converge to 1.
KELLER: Coefficients = ((3.4445, -4.7750, 2.0315),)

#: Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932, Table/Algorithm for l_0 = 1e-3):
#: per-step minimax-optimal odd quintics; the last entry repeats once the sequence is exhausted.
#: ``spectrakit.linalg.polar_schedule(1e-3, tol=0)`` re-derives the first seven at run time (tested).
POLAR_EXPRESS: Coefficients = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)

COEFFICIENT_SETS: dict[str, tuple[Coefficients, int]] = {
    # name: (coefficients, default number of steps)
    "keller": (KELLER, 5),
    "polar_express": (POLAR_EXPRESS, 8),
}

#: Keller's normalisation: X / (||X||_F + KELLER_EPS), as in the reference implementations.
KELLER_EPS = 1e-7
_SAFETY = 1.01  # Polar Express: divide (a, b, c) by (s, s^3, s^5) on all but the last step for bf16 safety.


def _step_coefficients(coefficients: Coefficients, steps: int, safety: bool) -> list[tuple[float, float, float]]:
    out = [tuple(coefficients[min(i, len(coefficients) - 1)]) for i in range(steps)]
    if safety and len(coefficients) > 1:
        s = _SAFETY
        out = [(a / s, b / s**3, c / s**5) for a, b, c in out[:-1]] + out[-1:]
    return out  # type: ignore[return-value]


def polar_iterate(X: Tensor, coefficients: list[tuple[float, float, float]]) -> Tensor:
    """Apply the quintic steps to a batch (B, m <= n) of wide matrices already scaled to ||X||_2 <= 1."""
    for a, b, c in coefficients:
        A = gram(X)
        B = symmetric_addmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return X


def msign(
    X: Tensor,
    *,
    coefficients: str | Coefficients = "polar_express",
    steps: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Polar factor msign(X) = U V^T of each trailing matrix of ``X`` (shape (..., m, n)).

    Args:
        X: floating tensor with at least 2 dims; batched over the leading dims.
        coefficients: ``"polar_express"`` (default, 8 steps), ``"keller"`` (5 steps, normalised by
            ||X||_F + 1e-7 as in KellerJordan/Muon and torch.optim.Muon) or an explicit sequence of (a, b, c)
            triples (the last one repeats; normalised by 1.01 ||X||_F, as Polar Express).
        steps: number of quintic steps (default: the set's own).
        dtype: compute dtype of the iteration. None (default): bfloat16 where bf16 matmuls are fast (CUDA, as
            in Muon, and CPUs with AMX tiles or AVX512-BF16: ``capability.fast_bfloat16_matmul``), float32
            elsewhere (float64 inputs stay float64). The output has the input's dtype.

    A zero matrix maps to zero; NaN in gives NaN out. The input is scaled by its Frobenius norm, an
    upper bound on the spectral norm, so no host synchronisation happens. On CPUs without bfloat16 matrix units
    (e.g. AVX2-only) bfloat16 matmuls are ~20-300x slower than float32, hence float32 there.
    """
    if _sharded.is_sharded(X):  # FSDP2 / tensor-parallel input: evaluated by spectrakit.distributed (see _sharded)
        return _sharded.call(msign, X, coefficients=coefficients, steps=steps, dtype=dtype)
    check_tensor(X, "X", min_dim=2)
    check_positive_int(steps, "steps")
    if isinstance(coefficients, str):
        if coefficients not in COEFFICIENT_SETS:
            raise ValueError(f"coefficients must be one of {sorted(COEFFICIENT_SETS)} or a sequence of (a, b, c), "
                             f"got {coefficients!r}")
        coeffs, default_steps = COEFFICIENT_SETS[coefficients]
        named_polar_express = coefficients == "polar_express"
    else:
        coeffs = [tuple(float(v) for v in abc) for abc in coefficients]
        if not coeffs or any(len(abc) != 3 for abc in coeffs):
            raise ValueError("coefficients must be a non-empty sequence of (a, b, c) triples")
        default_steps, named_polar_express = len(coeffs), False
    steps = default_steps if steps is None else steps
    work_dtype = _work_dtype(X, dtype)

    transposed = X.shape[-2] > X.shape[-1]
    Y = X.mT if transposed else X
    batch_shape = Y.shape[:-2]
    Y = Y.reshape(-1, *Y.shape[-2:])
    # Scale by the Frobenius norm (an upper bound on sigma_max). Keller's quintic is not convergent (its fixed
    # points spread over [0.7, 1.2]), so its result depends on the start: it uses the reference's
    # ||X||_F + 1e-7 (KellerJordan/Muon, torch.optim.Muon) instead of the safety factor.
    norm = torch.linalg.vector_norm(Y, dim=(-2, -1), keepdim=True, dtype=torch.float64)
    norm = norm + KELLER_EPS if coefficients == "keller" else norm * _SAFETY
    Y = _scaled(Y, 1 / norm.clamp_min(1e-300)).to(work_dtype)
    Y = polar_iterate(Y, _step_coefficients(coeffs, steps, safety=named_polar_express))
    Y = Y.reshape(*batch_shape, *Y.shape[-2:])
    return (Y.mT if transposed else Y).to(X.dtype)


def _scaled(Y: Tensor, scale: Tensor) -> Tensor:
    """Y * scale without a float64 copy of Y: the float64 ``scale`` is applied as a power of two near its square
    root times the rest (each a float32 normal number for any scale of a float32/16 input), in float32 for
    float32/16 inputs, so no input scale over- or underflows; float64 inputs stay float64."""
    if Y.dtype == torch.float64:
        return Y * scale
    scale = scale.clamp(2.0**-200, 2.0**200)  # nonzero float32/16 inputs need 2^-150 .. 2^150; zero maps to zero
    power = torch.exp2(torch.floor(torch.log2(scale) / 2))
    return (Y.float() * power.float()).mul_((scale / power).float())


def _work_dtype(X: Tensor, requested: torch.dtype | None) -> torch.dtype:
    if requested is None:
        if X.dtype == torch.float64:
            return torch.float64
        return torch.bfloat16 if fast_bfloat16_matmul(X.device) else torch.float32
    if requested not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        raise TypeError(f"dtype must be a floating torch dtype or None, got {requested}")
    return requested
