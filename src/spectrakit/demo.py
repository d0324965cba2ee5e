"""``spectrakit demo``: a short tour of the matrix functions against exact SVD."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compare soft_clip/hard_clip/msign methods with exact SVD on a random matrix")
    p.add_argument("--size", type=int, default=512, help="matrix side (default 512)")
    p.add_argument("--ratio", type=float, default=100.0, help="sigma_max / c of the test matrix (default 100)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from spectrakit.linalg import hard_clip, hard_clip_svd, msign, msign_svd, soft_clip, soft_clip_svd

    if args.size < 2 or not args.ratio > 0:
        raise SystemExit("--size must be >= 2 and --ratio > 0")
    torch.manual_seed(0)
    n = args.size
    U, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    s = torch.logspace(0, -3, n, dtype=torch.float64) * args.ratio
    X = ((U * s) @ V.T).float()
    c = 1.0
    # bfloat16 matmuls are very slow on CPUs without bf16 units: the iterations run in float32 on CPU
    half = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    rows = [("soft_clip polar", lambda: soft_clip(X, c, method="polar"), soft_clip_svd(X.double(), c)),
            ("soft_clip newton_schulz", lambda: soft_clip(X, c, method="newton_schulz", dtype=half),
             soft_clip_svd(X.double(), c)),
            ("hard_clip", lambda: hard_clip(X, c), hard_clip_svd(X.double(), c)),
            ("msign polar_express", lambda: msign(X, dtype=half), msign_svd(X.double()))]
    print(f"{n}x{n} float32 matrix, sigma_max/c = {args.ratio:g}; relative Frobenius error vs float64 SVD")
    for name, fn, ref in rows:
        t0 = time.perf_counter()
        Y = fn()
        dt = time.perf_counter() - t0
        err = (torch.linalg.matrix_norm(Y.double() - ref) / torch.linalg.matrix_norm(ref)).item()
        print(f"  {name:<26} error {err:9.2e}   {dt * 1e3:8.1f} ms")
    return 0
