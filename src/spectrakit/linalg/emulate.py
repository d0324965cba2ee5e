"""Emulate reduced-precision matrix products on any device: round the inputs of every product to a format.

Used to measure what TF32 or bfloat16 tensor-core products (and their split-precision variants) do to an
algorithm without the hardware. Inside ``rounded_products(fmt)`` every ``mm``/``bmm``/``addmm``/``baddbmm``
(what ``torch.matmul`` and ``@`` dispatch to) rounds both operands to ``fmt`` and multiplies in float32:

- ``"tf32"``: zero the low 13 of float32's 23 mantissa bits (10 kept, as the TF32 tensor-core input format;
  truncation, a slightly pessimistic model of the hardware's rounding);
- ``"bf16"``: round to bfloat16 (7 mantissa bits kept), ``x.to(torch.bfloat16).float()``;
- ``"3xtf32"`` / ``"bf16x3"``: split precision, x = hi + lo with hi = round(x), lo = round(x - hi), and
  A B ~ hi_A hi_B + hi_A lo_B + lo_A hi_B (three products; lo_A lo_B is dropped), as CUTLASS's 3xTF32 and
  cuBLAS's bf16x3 modes do.

Accumulation is float32 in every case (as on tensor cores). Products in float64 are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

FORMATS = ("tf32", "bf16", "3xtf32", "bf16x3")

_aten = torch.ops.aten


def _tf32(x: Tensor) -> Tensor:
    return (x.float().contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def _bf16(x: Tensor) -> Tensor:
    return x.to(torch.bfloat16).float()


def round_to(x: Tensor, fmt: str) -> Tensor:
    """x rounded to the input format of ``fmt`` ("tf32" or "bf16"; the split formats' hi part)."""
    return _tf32(x) if fmt.endswith("tf32") else _bf16(x)


def _product(fmt: str, mul: Callable[[Tensor, Tensor], Tensor], A: Tensor, B: Tensor) -> Tensor:
    Ah, Bh = round_to(A, fmt), round_to(B, fmt)
    out = mul(Ah, Bh)
    if fmt in ("3xtf32", "bf16x3"):
        Al, Bl = round_to(A.float() - Ah, fmt), round_to(B.float() - Bh, fmt)
        out = out + mul(Ah, Bl) + mul(Al, Bh)
    return out


class _RoundedProducts(TorchDispatchMode):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.fmt = fmt

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet not in (_aten.mm, _aten.bmm, _aten.addmm, _aten.baddbmm) or args[-1].dtype == torch.float64:
            return func(*args, **kwargs)
        mul = _aten.mm.default if packet in (_aten.mm, _aten.addmm) else _aten.bmm.default
        if packet in (_aten.mm, _aten.bmm):
            A, B = args[0], args[1]
            result = _product(self.fmt, mul, A, B)
        else:
            bias, A, B = args[0], args[1], args[2]
            beta, alpha = kwargs.get("beta", 1), kwargs.get("alpha", 1)
            result = alpha * _product(self.fmt, mul, A, B) + (beta * bias if beta != 0 else 0)
        result = result.to(A.dtype)
        out = kwargs.get("out")
        if out is not None:
            out.copy_(result)
            return out
        return result


@contextlib.contextmanager
def rounded_products(fmt: str) -> Iterator[None]:
    """Context in which every float32/16 matrix product rounds its inputs to ``fmt`` (one of FORMATS)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    with _RoundedProducts(fmt):
        yield
