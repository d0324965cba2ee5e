"""Bad arguments raise TypeError/ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

from spectrakit.linalg import (
    block_power_iteration,
    hard_clip,
    msign,
    soft_clip,
    solve_multiplier,
    spectral_norm,
    top_singular,
)

X = torch.randn(4, 6)


@pytest.mark.parametrize("fn", (soft_clip, hard_clip))
def test_clip_arguments(fn):
    for c in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="c must"):
            fn(X, c)
    with pytest.raises(TypeError, match="c must"):
        fn(X, "1")
    with pytest.raises(TypeError, match="c must"):
        fn(X, torch.tensor(1))
    with pytest.raises(TypeError, match="X must"):
        fn(torch.ones(4, 6, dtype=torch.int64), 1.0)
    with pytest.raises(TypeError, match="X must"):
        fn([[1.0]], 1.0)
    with pytest.raises(ValueError, match="X must have at least 1"):
        fn(torch.tensor(1.0), 1.0)
    with pytest.raises(ValueError, match="method must"):
        fn(X, 1.0, method="magic")
    for steps in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="steps must"):
            fn(X, 1.0, steps=steps)
    with pytest.raises(ValueError, match="dtype"):
        fn(X, 1.0, method="polar", dtype=torch.float16)
    if fn is hard_clip:  # bfloat16 is the soft clip's fast mode only
        with pytest.raises(ValueError, match="dtype"):
            fn(X, 1.0, method="polar", dtype=torch.bfloat16)


def test_hard_clip_has_no_newton_schulz():
    with pytest.raises(ValueError, match="method must"):
        hard_clip(X, 1.0, method="newton_schulz")


def test_msign_arguments():
    with pytest.raises(ValueError, match="X must have at least 2"):
        msign(torch.randn(5))
    with pytest.raises(TypeError, match="X must"):
        msign(torch.ones(3, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="coefficients must"):
        msign(X, coefficients="fastest")
    with pytest.raises(ValueError, match="coefficients must"):
        msign(X, coefficients=[(1.0, 2.0)])
    with pytest.raises(ValueError, match="steps must"):
        msign(X, steps=0)
    with pytest.raises(TypeError, match="dtype must"):
        msign(X, dtype=torch.int8)


def test_power_iteration_arguments():
    with pytest.raises(ValueError, match="iters must"):
        spectral_norm(X, iters=0)
    with pytest.raises(ValueError, match="v0 must"):
        spectral_norm(X, v0=torch.randn(5))
    with pytest.raises(ValueError, match="X must have at least 2"):
        spectral_norm(torch.randn(3))
    for k in (0, 5, 2.0):
        with pytest.raises(ValueError, match="k must"):
            top_singular(X, k)
    with pytest.raises(ValueError, match="v0 must"):
        top_singular(X, 2, v0=torch.randn(6, 3))
    for V in (torch.randn(6, 0), torch.randn(6, 5), torch.randn(4, 2), torch.randn(2, 6, 2)):
        with pytest.raises(ValueError, match="V must have shape"):
            block_power_iteration(X, V, 1)
    with pytest.raises(ValueError, match="iters must"):
        block_power_iteration(X, torch.randn(6, 2), 0)


def test_multiplier_arguments():
    with pytest.raises(ValueError, match="method must be one of"):
        solve_multiplier(X, X, method="newton")
