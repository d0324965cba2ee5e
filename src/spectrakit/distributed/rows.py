"""Spectral matrix functions of sharded (DTensor) matrices without gathering the matrix.

soft_clip, hard_clip and msign are unitarily invariant spectral maps: f(X) = U f(S) V^T for X = U S V^T.
Hence for any factorization X = Q R with orthonormal columns in Q, f(X) = Q f(R). With the rows of an
m x n matrix spread over N ranks (FSDP2 shards dim 0), a tall-skinny QR gives Q and the small n x n R
with one all-gather of n x n matrices:

    X_r = Q_r R_r                       (local QR, float64)
    [R_1; ...; R_N] = Q' R              (every rank, same input: same R)
    rows of f(X) on rank r = Q_r Q'_r f(R)

f(R) is evaluated by the very function the caller asked for (same method, steps, dtype), on R^T, which
has the same n x n Gram matrix R^T R = X^T X that the single-device call forms in its wide orientation.
So in exact arithmetic the result equals the single-device call; in floating point it differs by the
round-off of forming R (relative ~1e-7 in float32). This is the Gram-space evaluation: each rank applies the
matrix function to its own rows; only n x n matrices travel. QR is used instead of the Gram matrix
X^T X itself because it does not square the condition number and works with any method of f.

Cost per rank: two QRs and one product of m_r x n by n x n (~6 m_r n^2 flops), plus f of an n x n matrix,
which every rank evaluates (redundantly). It pays where moving the m x n matrix costs more than that, and
where f's cost grows with m (msign's polynomial iteration on X: ~32 m n^2); for methods that already
work in the n x n Gram space (the polar soft/hard clips) the per-rank compute is higher than an owner's.

Other layouts (replicated, sharded over a batch dim) are evaluated locally; anything else falls back to
gathering the full matrix on every rank.

Importing this module (``import spectrakit.distributed`` does) registers :func:`sharded_call` with
``spectrakit.linalg``, whose functions hand it their DTensor inputs; linalg itself never imports this layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..linalg import _sharded
from . import _comm


def _plain(value: Any) -> Any:
    return value.full_tensor() if _sharded.is_sharded(value) else value


def _tsqr_apply(local: Tensor, fn: Callable[..., Any], group: Any, args: tuple, kwargs: dict,
                return_bound: bool) -> tuple[Tensor, Tensor | None]:
    """Rows of f(X) for the rows ``local`` (..., m_r, n) of a row-sharded X (see the module docstring).

    QR runs in float64 for float64 inputs and in float32 otherwise (Householder QR is backward stable: the
    error is float32 round-off of X, the same size as X's own rounding).
    """
    n = local.shape[-1]
    rank, _ = _comm.world(group)
    work = torch.float64 if local.dtype == torch.float64 else torch.float32
    Q1, R1 = torch.linalg.qr(local.to(work))
    k = R1.shape[-2]
    R_pad = torch.zeros(*local.shape[:-2], n, n, dtype=work, device=local.device)
    R_pad[..., :k, :] = R1
    stacked = torch.cat(_comm.all_gather_equal(R_pad, group), dim=-2)
    Q2, R = torch.linalg.qr(stacked)
    out = fn(R.mT.to(local.dtype), *args, **kwargs)
    F, bound = out if return_bound else (out, None)
    # rows of Q f(R) = Q1 (Q2_r f(R)), associated so that the m_r x n product happens once
    return (Q1 @ (Q2[..., rank * n:rank * n + k, :] @ F.mT.to(work))).to(local.dtype), bound


def sharded_call(fn: Callable[..., Any], X: Any, *args: Any, **kwargs: Any) -> Any:
    """Evaluate ``fn(X, *args, **kwargs)`` for a DTensor ``X``; returns a DTensor with X's placements.

    ``fn`` must be a unitarily invariant spectral map of each trailing matrix (soft_clip, hard_clip, msign).
    With ``return_bound=True`` the bound comes back as a DTensor too (replicated unless X is sharded
    over a batch dim).
    """
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    args = tuple(_plain(a) for a in args)
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    return_bound = bool(kwargs.get("return_bound", False))
    mesh, placements = X.device_mesh, tuple(X.placements)
    threshold = args[0] if args else None
    scalar_threshold = not isinstance(threshold, Tensor) or threshold.dim() == 0

    def wrap(local: Tensor, bound: Tensor | None) -> Any:
        Y = DTensor.from_local(local, mesh, placements, shape=X.shape, stride=X.stride())
        if not return_bound:
            return Y
        return Y, DTensor.from_local(bound, mesh, [Replicate()] * mesh.ndim)

    if mesh.ndim == 1 and X.dim() >= 2:
        placement = placements[0]
        dim = placement.dim % X.dim() if isinstance(placement, Shard) else None
        if isinstance(placement, Replicate) or (dim is not None and dim < X.dim() - 2 and scalar_threshold):
            out = fn(X.to_local(), *args, **kwargs)  # whole matrices on every rank: nothing to exchange
            if return_bound and dim is not None:  # the bound is sharded over the batch like X (possibly unevenly)
                batch = X.shape[:-2]
                bound = DTensor.from_local(out[1], mesh, placements, shape=batch,
                                           stride=torch.empty(batch, device="meta").stride())
                return DTensor.from_local(out[0], mesh, placements, shape=X.shape, stride=X.stride()), bound
            return wrap(*out) if return_bound else wrap(out, None)
        if dim == X.dim() - 2:
            return wrap(*_tsqr_apply(X.to_local(), fn, mesh.get_group(), args, kwargs, return_bound))
        if dim == X.dim() - 1:
            Yt, bound = _tsqr_apply(X.to_local().mT, fn, mesh.get_group(), args, kwargs, return_bound)
            return wrap(Yt.mT.contiguous(), bound)
    full = X.full_tensor()
    out = fn(full, *args, **kwargs)
    Y, bound = out if return_bound else (out, None)
    Y = distribute_tensor(Y, mesh, placements, src_data_rank=None)
    if not return_bound:
        return Y
    return Y, distribute_tensor(bound, mesh, [Replicate()] * mesh.ndim, src_data_rank=None)


_sharded.register(sharded_call)
