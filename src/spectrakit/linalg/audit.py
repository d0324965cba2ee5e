"""Count what a computation asks of the device: matmul FLOPs by dtype, host reads, host-to-device copies, ops.

``with OpAudit() as audit: f(x)`` records every aten op dispatched inside (it works on the ``meta`` device,
where nothing is computed, so full-size shapes cost nothing):

- ``matmul_flops[dtype]``: 2 m k n per product (mm, bmm, addmm, baddbmm; what ``@`` dispatches to), by the
  dtype of its operands;
- ``other_flops``: the dense factorisations, counted as Cholesky m^3/3 and triangular solve m^2 k;
- ``host_reads``: ``.item()``/``bool()``/``tolist()`` (aten::_local_scalar_dense), each a device sync (on
  ``meta`` tensors, which hold no values, the read returns 0 / False so that the code runs on);
- ``host_copies``: copies from a CPU tensor to another device (blocking when pageable);
- ``ops``: aten ops dispatched (a proxy for kernel launches in eager mode).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_MATMULS = {_aten.mm: (0, 1), _aten.bmm: (0, 1), _aten.addmm: (1, 2), _aten.baddbmm: (1, 2)}
_COPIES = (_aten._to_copy, _aten.copy_, _aten.to, _aten._copy_from)


def _device(x: object) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


class OpAudit(TorchDispatchMode):
    """Dispatch mode that counts matmul FLOPs by dtype, host reads, copies from the host and ops."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul_flops: Counter[torch.dtype] = Counter()
        self.other_flops = 0
        self.host_reads = 0
        self.host_copies = 0
        self.ops = 0
        self.op_names: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        packet = func.overloadpacket
        self.ops += 1
        self.op_names[packet.__name__] += 1
        if packet in _MATMULS:
            i, j = _MATMULS[packet]
            A, B = args[i], args[j]
            batch = math.prod(A.shape[:-2]) if A.dim() > 2 else 1
            self.matmul_flops[A.dtype] += 2 * batch * A.shape[-2] * A.shape[-1] * B.shape[-1]
        elif packet is _aten.linalg_cholesky_ex:
            A = args[0]
            self.other_flops += math.prod(A.shape[:-2]) * A.shape[-1] ** 3 // 3
        elif packet is _aten.linalg_solve_triangular:
            A, B = args[0], args[1]
            self.other_flops += math.prod(B.shape[:-2]) * A.shape[-1] ** 2 * B.shape[-1]
        elif packet is _aten._local_scalar_dense:
            self.host_reads += 1
            if args[0].device.type == "meta":  # nothing to read: answer 0 / False so the caller can go on
                return False if args[0].dtype == torch.bool else 0
        if packet in _COPIES:
            src = args[1] if packet is _aten.copy_ else args[0]
            dst = args[0] if packet is _aten.copy_ else kwargs.get("device")
            if _device(src) is not None and _device(src).type == "cpu" and dst is not None:
                dst_type = dst.device.type if isinstance(dst, torch.Tensor) else torch.device(dst).type
                self.host_copies += dst_type != "cpu"
        return func(*args, **kwargs)

    @property
    def float64_matmul_flops(self) -> int:
        return self.matmul_flops.get(torch.float64, 0)

    def total_matmul_flops(self) -> int:
        return sum(self.matmul_flops.values())
