"""Products known to be symmetric, computed on the lower block triangle only.

For C = A B with C = C^T in exact arithmetic (X X^T, or A B with symmetric, commuting A and B, which is every
product inside the Gram-space polynomial iterations), split the rows into k blocks and compute only the
blocks C_ij with j <= i, then mirror them: (k + 1) / (2k) of the multiply-adds of A @ B (62.5% for k = 4).
The off-diagonal blocks are exact mirrors; the diagonal blocks are symmetric up to rounding, as A @ B is.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Below this side a plain matmul is used. Measured on 2 AVX2 cores (benchmarks/bench_linalg.py --symmetric):
#: 4 blocks take 0.7-0.85x the time of A @ B from 768 to 2048 (float32 and float64), about 1.0x at 512 and
#: more than 1x below. From LARGE_SIDE on, 8 blocks are used (measured 2026-12-02, AMD EPYC, float32, m x m
#: products, time vs A @ B with 4 / 8 blocks: 1 thread 0.68 / 0.62 at 768, 0.70 / 0.65 at 1024, 0.65 / 0.60 at
#: 2048; 2 threads 0.69 / 0.68, 0.71 / 0.68, 0.66 / 0.64; at 512 8 blocks are slower on 2 threads, 0.81 / 0.88).
#: Only float32 and float64 products are blocked:
#: where bf16/fp16 matmuls are fast (AMX tiles) the mirror copies and the strided outputs cost more than the
#: multiply-adds saved (the blocked bf16 product was slower than the full one, most of its time in copies).
#: Accelerators take the same rule: each block is still one large (batched) product there, and the FLOPs saved
#: are what the accurate mode's estimate in BENCHMARKS.md counts (its time there is not measured yet:
#: benchmarks/bench_gpu.py times blocked against plain products but has not run; 8 blocks add 7 small mirror
#: copies per product).
MIN_SIDE = 512
LARGE_SIDE = 768


BLOCKED_DTYPES = (torch.float32, torch.float64)


def block_count(m: int, dtype: torch.dtype) -> int:
    """Row blocks for an m x m result in ``dtype`` (on every device): 1 (plain matmul) below MIN_SIDE and for
    dtypes outside BLOCKED_DTYPES, else 4, or 8 from LARGE_SIDE."""
    if m < MIN_SIDE or dtype not in BLOCKED_DTYPES:
        return 1
    return 4 if m < LARGE_SIDE else 8


def symmetric_matmul(A: Tensor, B: Tensor, *, blocks: int | None = None) -> Tensor:
    """A @ B for (..., m, k) @ (..., k, m) operands whose product is symmetric; batched like ``torch.matmul``.

    The caller guarantees the symmetry (only the lower block triangle is computed; the rest is its mirror).
    ``blocks`` overrides the number of row blocks (default ``block_count(m, A.dtype)``).
    """
    return symmetric_addmm(None, A, B, blocks=blocks)


def symmetric_addmm(C: Tensor | None, A: Tensor, B: Tensor, *, beta: float = 1.0, alpha: float = 1.0,
                    blocks: int | None = None, out: Tensor | None = None) -> Tensor:
    """beta C + alpha A @ B (A @ B alone for C None) where C and A @ B are symmetric, as one fused product
    (``torch.baddbmm`` / ``torch.addmm``) per block; 3-D operands of one batch shape, or 2-D ones. ``out`` (which
    may be C itself: an in-place update) receives the result."""
    m = A.shape[-2]
    k = block_count(m, A.dtype) if blocks is None else max(1, min(blocks, m))
    fused = torch.baddbmm if A.dim() == 3 else torch.addmm
    if k == 1:
        into = {} if out is None else {"out": out}
        return torch.matmul(A, B, **into) if C is None else fused(C, A, B, beta=beta, alpha=alpha, **into)
    step = -(-m // k)
    if out is None:
        out = torch.empty(*torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]), m, m, dtype=A.dtype, device=A.device)
    for start in range(0, m, step):
        stop = min(m, start + step)
        rows, cols, block = A[..., start:stop, :], B[..., :, :stop], out[..., start:stop, :stop]
        if C is None:
            torch.matmul(rows, cols, out=block)
        else:
            fused(C[..., start:stop, :stop], rows, cols, beta=beta, alpha=alpha, out=block)
        if start:
            out[..., :start, start:stop] = out[..., start:stop, :start].mT
    return out


def gram(X: Tensor) -> Tensor:
    """X X^T for (..., m, n) X via ``symmetric_matmul``."""
    return symmetric_matmul(X, X.mT)


#: ``gram_float64`` converts X to float64 in column chunks of about this many bytes (cache-sized, so the float64
#: copy of a chunk is still in cache when the product reads it, and no float64 copy of the whole X is allocated).
CHUNK_BYTES = 1 << 21


def gram_float64(X: Tensor) -> Tensor:
    """X X^T in float64 for a (B, m, n) X of any floating dtype: sum_j X_j X_j^T over column chunks X_j, each
    converted to float64 on its own (at least 256 columns, about CHUNK_BYTES), accumulated in place."""
    m, n = X.shape[-2:]
    width = max(256, CHUNK_BYTES // (8 * m))
    if X.dtype == torch.float64 or n <= 2 * width:
        return gram(X.double())
    G = None
    for start in range(0, n, width):
        chunk = X[..., start:start + width].double()
        G = gram(chunk) if G is None else symmetric_addmm(G, chunk, chunk.mT, out=G)
    return G
