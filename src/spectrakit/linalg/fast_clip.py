"""The fast soft clip: bfloat16 products only, FAST_STEPS Polar Express steps in the Gram space, no host reads.

With G = X X^T (wide orientation, m <= n) and R_0 = (I + G/c^2)/alpha (``restart.stacked_problem``: eigenvalues in
[l^2, 1], l = alpha^{-1/2}), ``gram_iteration.inverse_sqrt`` runs the schedule fitted to each matrix's lower end
max(l, FAST_LOWER_END) for FAST_STEPS steps: Q = prod_t p_t(R_t) ~ R_0^{-1/2}, and H_c(X) = alpha^{-1/2} Q X / u_K.
A schedule cut short leaves the stack's singular values in [l_K, u_K], u_K = 2 - l_K (Polar Express equioscillates
about 1), so dividing by u_K keeps the resolved singular values at or below c.

Why so few steps: in bfloat16 (8 significant bits, unit roundoff u = 2^-8) R_0's entries carry relative errors up
to u, i.e. its small eigenvalues, near 1/alpha, absolute errors ~u; once 1/alpha falls below that (sigma_max/c >~ 16)
the small singular values of X are no longer resolved, whatever the iteration. Amplifying them as if they were only
amplifies that noise: the schedule's lower end is therefore never below FAST_LOWER_END = 2^-4.5, just under
sqrt(u), where the stack's squared singular values sink into the rounding (measured over floors of 0.02-0.1: 0.05
gave the least error at sigma_max/c = 30, 0.02-0.03 at 100), and more steps do not help (measured at sigma_max/c =
100: 4 steps give relative errors up to 4; 3 steps from the true l 0.54, with spectral norms up to 2.3 c; with the
floor 0.45 and at most 1.06 c). The accuracy this mode can have is that of the authors' own bfloat16 method (SPEC
1.3), which has the same limit; BENCHMARKS.md has both.

Matmul cost in bfloat16: X X^T (row-blocked when n >= 4 m, as in ``restart``) and Q X (4 m^2 n together at most),
G^2 and ``inverse_sqrt``'s 8 products for 3 steps (18 m^3), against the authors' 4 m^2 n + 60 m^3.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gram_iteration import gather_schedule, inverse_sqrt
from .restart import TOL, lower_end_after, stacked_problem, within_exact_bound

#: Polar Express steps of the fast mode (measured best of 3-6 in bfloat16: see the module docstring).
FAST_STEPS = 3
#: The schedule's lower end is at least this: below it bfloat16 does not resolve the stack's singular values.
FAST_LOWER_END = 2.0**-4.5


def soft_clip_fast(X: Tensor, c: Tensor, *, steps: int | None = None) -> tuple[Tensor, Tensor]:
    """(H_c(X), sigma_bound) for a (B, m <= n) batch X and c of shape (B,), bfloat16 products, result in float32.

    ``steps``: Polar Express steps (default FAST_STEPS). Measured relative Frobenius error vs float64 SVD
    (BENCHMARKS.md, precision section): ~5e-3 up to sigma_max/c = 1, ~5e-2 at 10, ~0.45 at 100, <= 1 beyond;
    finite at every ratio, the spectral norm within ~6% of c at most (the authors' method: up to 40%).
    """
    p = stacked_problem(X, c, torch.bfloat16, lowest_end=FAST_LOWER_END)
    schedule = gather_schedule(p.idx, steps or FAST_STEPS, torch.float32, TOL, adaptive=False)
    Q = inverse_sqrt(p.R.bfloat16(), p.R2.bfloat16(), schedule._replace(coeffs=schedule.coeffs.bfloat16()))
    Q = (Q + Q.mT) * 0.5
    upper = (2 - lower_end_after(p.idx, schedule.coeffs)).clamp(min=1.0)
    out = (Q @ p.Xn).float() * (p.root_inv * (p.scale / upper)[:, None, None])
    return within_exact_bound(out, p.scale, c.float() * X.shape[-2] ** 0.5), p.bound.sqrt() * p.scale
