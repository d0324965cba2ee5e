"""Warm-startable power iterations: the block power iteration (top-k triplets) and its k = 1 case, and
top_singular.

:func:`block_power_iteration` runs T steps from V (..., n, k):  P = X V;  U = QR(P);  W = X^T U;
s = column norms of W;  V = W / s  (with an optional Rayleigh-Ritz rotation of (U, W) inside the block).
Then U diag(s) V^T = U U^T X, s <= sigma_max (with the rotation, s_i <= sigma_i), and U spans the power
subspace span(X (X^T X)^(T-1) V_0). :func:`spectral_norm` is its k = 1 case (u = X v / ||X v||,
v = X^T u / ||X^T u||) with a last half step, sigma = ||X v|| <= sigma_max; polar_clip's ratio estimate runs
the k = 1 case on the symmetric G = X X^T.

:func:`top_singular` is the same subspace iteration with its own rounding: V is re-orthonormalised by a QR
once a step (V = QR(X^T X V)) and the triplets come from an SVD of the k x n matrix U^T X after one more
half step (the Rayleigh-Ritz step above, by SVD instead of an eigendecomposition). In exact arithmetic
top_singular(X, k, iters=T) = block_power_iteration(X.float(), V_0, T + 1) up to signs.

All run a fixed number of iterations and return the right vectors a caller passes back next time, so a
slowly drifting matrix needs only one or two iterations per call.

Sync-free steps (``sync_free=True``). The Rayleigh-Ritz steps above call ``torch.linalg.eigh`` / ``svd``, which
on CUDA read their ``info`` on the host (a device sync; see ``spectrakit.linalg.audit``). With ``sync_free``
they are replaced by matmul and QR steps (QR does not synchronise), in the working dtype (no float64):

- block_power_iteration's rotation (:func:`ritz_rotation`): in place of the eigenvectors of the k x k
  G = W^T W, ``RITZ_STEPS`` orthogonal iteration steps Z <- QR(G Z) (2 ops each) then ``JACOBI_SWEEPS``
  simultaneous Jacobi sweeps (all k (k - 1) / 2 pairs rotated at once by their 2x2 Jacobi angles and
  re-orthogonalised by one QR: ~12 batched ops a sweep, no loop over rotations): ~55 small batched ops where
  eigh is one op and a sync. The rotations accumulate over the block steps and an optimizer's warm-started
  steps (its V comes back rotated), so G starts nearly diagonal. U diag(s) V^T = U U^T X holds exactly as
  before; the triplets, and the polar factor U_k V_k^T the spike-aware rule needs, agree with the eigh ones to
  rounding where the spectrum is resolved; a cluster of relative spread delta left coupled moves U_k V_k^T by
  about delta / 4 (measured: 2e-3 for 6 values within 1% from a cold start, up to 7e-3 for k = 64 with 61
  unconverged tail values in the block; warm starts keep resolving them).
- top_singular's last step (:func:`top_triplet`): only the top triplet is a Ritz triplet, from the top
  eigenvector of the k x k C = B B^T, B = Q^T X (normalised squaring, see there); the other k - 1 columns
  complete it to a basis of the same subspace with U diag(S) V^T = U U^T X, a valid warm start.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validate import check_positive_int, check_tensor

_TINY = 1e-30

#: Orthogonal iteration steps and simultaneous Jacobi sweeps of the sync-free Rayleigh-Ritz rotation per block
#: power step (:func:`ritz_rotation`).
RITZ_STEPS = 8
JACOBI_SWEEPS = 3
#: Squarings C <- C C of the sync-free top eigenvector, C^(2^16) (:func:`top_triplet`), normalised every
#: ``_SQUARINGS_PER_NORM``-th.
TOP_SQUARINGS = 16
_SQUARINGS_PER_NORM = 4


def _random_start(X: Tensor, shape: tuple[int, ...], seed: int = 0) -> Tensor:
    gen = torch.Generator(device=X.device).manual_seed(seed)
    return torch.randn(shape, generator=gen, device=X.device, dtype=torch.float32)


def block_power_iteration(X: Tensor, V: Tensor, iters: int, rayleigh_ritz: bool = True, *, sync_free: bool = False
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """``iters`` block power steps on X (..., m, n) from V (..., n, k): P = X V; U = QR(P); W = X^T U;
    s = ||W columns||; V = W / s. Returns (U (..., m, k) orthonormal, s (..., k), V (..., n, k) unit columns)
    with U diag(s) V^T = U U^T X. Warm-start the next call with the returned V.

    The products run in X's dtype (no float32 copy of a low-precision X), the rest in float32 or wider.

    The QR basis U spans the top-k subspace long before its columns align with the individual singular
    vectors (they converge at the rates s_{i+1}/s_i, slow for spikes of similar size), and until they do,
    s are not singular values and V is not orthogonal. ``rayleigh_ritz`` rotates (U, W) by the eigenvectors
    of the k x k matrix W^T W (= U^T X X^T U) so that (U, s, V) are the exact singular triplets of U U^T X;
    with ``sync_free`` by :func:`ritz_rotation` instead (no eigh, no host sync; see the module docstring for its
    accuracy). U diag(s) V^T = U U^T X either way.
    """
    check_tensor(X, "X", min_dim=2)
    check_positive_int(iters, "iters", allow_none=False)
    if not isinstance(V, Tensor) or V.dim() != X.dim() or V.shape[:-1] != (*X.shape[:-2], X.shape[-1]) \
            or not 1 <= V.shape[-1] <= min(X.shape[-2:]):
        raise ValueError(f"V must have shape {(*X.shape[:-2], X.shape[-1])} + (k,) with 1 <= k <= min(m, n) = "
                         f"{min(X.shape[-2:])}, got {tuple(V.shape) if isinstance(V, Tensor) else type(V).__name__}")
    dtype = torch.promote_types(X.dtype, torch.float32)
    for _ in range(iters):  # products in X's dtype, the rest in >= float32
        U = torch.linalg.qr((X @ V.to(X.dtype)).to(dtype)).Q
        W = (X.mT @ U.to(X.dtype)).to(dtype)
        if rayleigh_ritz:
            if sync_free:
                Z = ritz_rotation(W)
            else:
                _, Z = torch.linalg.eigh((W.mT @ W).double())  # ascending eigenvalues
                Z = Z.flip(-1).to(W.dtype)
            U, W = U @ Z, W @ Z
        s = torch.linalg.vector_norm(W, dim=-2)
        V = W / s.clamp_min(_TINY)[..., None, :]
    return U, s, V


def _max_abs(X: Tensor) -> Tensor:
    """max |X| of each trailing matrix (..., 1, 1), at least the dtype's smallest normal number."""
    return X.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)


def ritz_rotation(W: Tensor, steps: int = RITZ_STEPS, sweeps: int = JACOBI_SWEEPS) -> Tensor:
    """An orthogonal k x k Z that diagonalises G = W^T W (W (..., n, k)) without eigh: ``steps`` orthogonal
    iteration steps Z <- QR(G Z) from Z = I (the columns by decreasing eigenvalue; the coupling of eigenvalues
    lambda_i > lambda_j falls by lambda_j / lambda_i a step), then ``sweeps`` simultaneous Jacobi sweeps
    Z <- Z J(Z^T G Z) (:func:`_simultaneous_jacobi`: every pair rotated at once by its own Jacobi angle; exact
    for one coupled pair, quadratically convergent once the couplings are small). G is that of W / max|W| (no
    overflow of the squares), in W's dtype.

    A cluster of eigenvalues of relative spread delta may stay coupled: the polar factor W Z diag(1/s) Z^T then
    moves by about delta / 4 (it is the exact one of a W whose cluster is made equal, within delta / 2).
    Batched over leading dims; a zero W gives an orthogonal Z (QR of zero is I up to signs), no NaN.
    """
    Wn = W / _max_abs(W)
    G = Wn.mT @ Wn
    Z = torch.linalg.qr(G).Q
    for _ in range(steps - 1):
        Z = torch.linalg.qr(G @ Z).Q
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    for _ in range(sweeps):
        Z = Z @ _simultaneous_jacobi(Z.mT @ G @ Z, eye)
    return Z


def _simultaneous_jacobi(A: Tensor, eye: Tensor) -> Tensor:
    """The orthogonal factor of I + T - T^T, T_ij = tan t_ij (i < j), t_ij = atan2(-2 a_ij, a_ii - a_jj) / 2 the
    Jacobi angle that zeroes a_ij of the symmetric A and puts the larger diagonal entry first: exact for one
    coupled pair (I + T - T^T is then sqrt(1 + tan^2 t) times that rotation), to first order for several."""
    d = A.diagonal(dim1=-2, dim2=-1)
    t = 0.5 * torch.atan2(-2 * A, d[..., :, None] - d[..., None, :])
    T = torch.tan(t.clamp(-1.5, 1.5)).triu(1)  # |t| <= pi / 2; tan(1.5) = 14 rotates by 1.5 rad
    return torch.linalg.qr(eye + T - T.mT).Q


def top_eigenvector(C: Tensor, squarings: int = TOP_SQUARINGS) -> Tensor:
    """A unit top eigenvector z (..., k) of each symmetric PSD C (..., k, k), matmul-only (no eigh).

    A = C^(2^squarings), by ``squarings`` squarings A <- A A with A / ||A||_F every ``_SQUARINGS_PER_NORM``-th
    (and first): A = sum_i lambda_i^p z_i z_i^T / norm, p = 2^squarings, is rank one up to (lambda_2 /
    lambda_1)^p. Its column c of largest norm (|z_1| is largest there, at least 1/sqrt(k) of it) is refined by
    one product, z = C c / ||C c||. A repeated top eigenvalue gives a vector of its eigenspace (any is exact);
    a close second one mixes in by at most sqrt(k) (lambda_2 / lambda_1)^(p + 1), which lowers the Rayleigh
    quotient z^T C z by at most about k lambda_1 / (e (2 p + 3)) (relative 3e-6 per unit of k at p = 2^16).
    C = 0 gives z = e_1.
    """
    A = C / torch.linalg.matrix_norm(C, keepdim=True).clamp_min(_TINY)
    for j in range(squarings):
        A = A @ A
        if (j + 1) % _SQUARINGS_PER_NORM == 0:
            A = A / torch.linalg.matrix_norm(A, keepdim=True).clamp_min(_TINY)
    column = torch.linalg.vector_norm(A, dim=-2).argmax(-1)  # (...,)
    c = A.take_along_dim(column[..., None, None], dim=-1)  # (..., k, 1)
    e1 = torch.eye(C.shape[-1], 1, dtype=C.dtype, device=C.device)
    z = C @ c + torch.finfo(C.dtype).eps ** 2 * e1  # e_1 for C = 0; for ||C||_2 >= 1, a relative eps^2 nudge
    return (z / torch.linalg.vector_norm(z, dim=-2, keepdim=True))[..., 0]


def top_triplet(Q: Tensor, B: Tensor, V: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sync-free Rayleigh-Ritz for the top triplet of Q B, B = Q^T X (..., k, n), Q (..., m, k) orthonormal: the
    top eigenvector z of C = B' B'^T, B' = B / max|B| (:func:`top_eigenvector`), then sigma = ||B^T z||,
    v = B^T z / sigma, u = Q z.

    Returned as the first column of (U (..., m, k), S (..., k), V (..., n, k)) = (Q H, ||B^T H|| by column,
    B^T H / S), H = I - 2 w w^T / w^T w the Householder reflection with H e_1 = -sign(z_1) z
    (w = z + sign(z_1) e_1): U is orthonormal, U diag(S) V^T = Q B, and the other columns complete the subspace
    (not singular triplets). A zero column of B^T H takes V's column instead (``V``: the unit columns of the
    caller's basis), so V stays a valid warm start; B = 0 gives S = 0.
    """
    scale = _max_abs(B)
    Bn = B / scale  # C = Bn Bn^T has ||C||_2 >= 1 unless B = 0
    z = top_eigenvector(Bn @ Bn.mT)
    k = z.shape[-1]
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    w = z + torch.where(z[..., :1] < 0, -1.0, 1.0) * eye[0]  # ||w||^2 = 2 + 2 |z_1| >= 2
    H = eye - (2 / (w * w).sum(-1))[..., None, None] * (w[..., :, None] * w[..., None, :])
    W = Bn.mT @ H  # norms of the scaled columns: no overflow of the squares
    S = torch.linalg.vector_norm(W, dim=-2)
    V = torch.where(S[..., None, :] > 0, W / S.clamp_min(_TINY)[..., None, :], V)
    return Q @ H, S * scale[..., 0], V


def spectral_norm(X: Tensor, *, iters: int = 10, v0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Estimate sigma_max of each trailing matrix of X (..., m, n) by power iteration in float32.

    The k = 1 case of :func:`block_power_iteration` (``iters`` times u = X v / ||X v||, v = X^T u / ||X^T u||,
    from ``v0`` of shape (..., n); a fixed-seed Gaussian when None), then a last half step. Returns
    (sigma, u, v) with sigma = ||X v|| <= sigma_max, u = X v / sigma; pass ``v`` back as ``v0`` to
    warm-start. A zero matrix gives sigma = 0.
    """
    check_tensor(X, "X", min_dim=2)
    check_positive_int(iters, "iters", allow_none=False)
    Xf = X.float()
    n = X.shape[-1]
    if v0 is None:
        v = _random_start(X, (*X.shape[:-2], n))
    else:
        if v0.shape != (*X.shape[:-2], n):
            raise ValueError(f"v0 must have shape {(*X.shape[:-2], n)}, got {tuple(v0.shape)}")
        v = v0.float()
    v = block_power_iteration(Xf, v[..., None], iters, rayleigh_ritz=False)[2][..., 0]
    Xv = (Xf @ v.unsqueeze(-1)).squeeze(-1)
    sigma = Xv.norm(dim=-1)
    return sigma, Xv / sigma.clamp_min(_TINY)[..., None], v


def top_singular(X: Tensor, k: int, *, iters: int = 2, v0: Tensor | None = None, sync_free: bool = False
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets of X (..., m, n) by block power iteration with QR, in float32.

    Each iteration: V = qr(X^T (X V)) (one QR per iteration, not two); then Q = qr(X V), and a final
    Rayleigh-Ritz step (SVD of the small k x n matrix Q^T X) orders the triplets. X V is divided by a power of two
    near max |X| (exact, on the small m x k block), so that X^T X V can neither overflow nor underflow. ``v0``
    (..., n, k) warm-starts; without it a fixed-seed Gaussian block (a randomized range finder) is used. Returns
    (U (..., m, k), S (..., k), V (..., n, k)).

    ``sync_free``: the last step without SVD (:func:`top_triplet`): only the first triplet (U[..., 0], S[..., 0],
    V[..., 0]) is the top Ritz triplet, the other columns a basis of the rest of the subspace.
    """
    check_tensor(X, "X", min_dim=2)
    check_positive_int(iters, "iters", allow_none=False)
    m, n = X.shape[-2:]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(m, n):
        raise ValueError(f"k must be an integer in [1, min(m, n)] = [1, {min(m, n)}], got {k!r}")
    Xf = X.float()
    if v0 is None:
        V = _random_start(X, (*X.shape[:-2], n, k))
    else:
        if v0.shape != (*X.shape[:-2], n, k):
            raise ValueError(f"v0 must have shape {(*X.shape[:-2], n, k)}, got {tuple(v0.shape)}")
        V = v0.float()
    scale = torch.exp2(torch.floor(torch.log2(_max_abs(Xf))))  # a power of two: dividing by it is exact
    V = torch.linalg.qr(V).Q
    for _ in range(iters):
        V = torch.linalg.qr(Xf.mT @ ((Xf @ V) / scale)).Q
    Q = torch.linalg.qr(Xf @ V).Q
    if sync_free:
        return top_triplet(Q, Q.mT @ Xf, V)
    Ub, S, Vh = torch.linalg.svd(Q.mT @ Xf, full_matrices=False)
    return Q @ Ub, S, Vh.mT
