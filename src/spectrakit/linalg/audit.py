"""Count what a computation asks of the device: matmul FLOPs by dtype, host reads, host-to-device copies, ops.

``with OpAudit() as audit: f(x)`` records every aten op dispatched inside (it works on the ``meta`` device,
where nothing is computed, so full-size shapes cost nothing):

- ``matmul_flops[dtype]``: 2 m k n per product (mm, bmm, addmm, baddbmm; what ``@`` dispatches to), by the
  dtype of its operands;
- ``other_flops``: the dense factorisations, counted as Cholesky m^3/3 and triangular solve m^2 k;
- ``host_reads``: ``.item()``/``bool()``/``tolist()`` (aten::_local_scalar_dense), each a device sync (on
  ``meta`` tensors, which hold no values, the read returns 0 / False so that the code runs on);
- ``host_copies``: copies from a CPU tensor to another device (blocking when pageable);
- ``device_syncs``: every point where the host waits for the device: the host reads above, copies from a
  device to the CPU, and the ops of :data:`SYNCING_OPS` (by name in ``sync_ops``), whose CUDA kernels read a
  device value on the host inside (so no host read is dispatched): they check LAPACK / cuSOLVER ``info``
  codes, or size their output by the data;
- ``ops``: aten ops dispatched (a proxy for kernel launches in eager mode).

The audit counts the op, not its effect, so it works on the CPU and the meta device too. What the linalg
front ends dispatch under a dispatch mode (composites are decomposed first; ``tests/test_sync_free.py`` checks
the names): ``torch.linalg.eigh``/``eigvalsh`` -> ``_linalg_eigh``; ``svd``/``svdvals``/``matrix_norm(ord=2)``
-> ``_linalg_svd``; ``inv`` -> ``linalg_inv_ex`` + ``_linalg_check_errors``; ``solve`` -> ``_linalg_solve_ex``
+ ``_linalg_check_errors``; ``cholesky`` -> ``linalg_cholesky_ex`` + ``_linalg_check_errors``. From ATen's
BatchLinearAlgebra.cpp:

- always synchronising: ``_linalg_check_errors`` (``infos.any().item()``), ``_linalg_eigh`` and ``_linalg_svd``
  (they call it on their ``info``; there is no ``_ex`` variant), ``linalg_eig``/``linalg_eigvals`` (computed on
  the CPU), ``linalg_lstsq``, ``cholesky``, ``cholesky_inverse``, ``cholesky_solve`` (MAGMA's info is a host
  int), ``linalg_pinv`` (an SVD or eigh inside); output sized by the data: ``nonzero``, ``masked_select``,
  ``_unique``/``_unique2``/``unique_dim``/``unique_consecutive``/``unique_dim_consecutive``, ``bincount``,
  ``repeat_interleave.Tensor`` without ``output_size``, ``histc`` with ``min == max`` (its range from the
  data), ``index.Tensor``/``index_put_`` with a boolean index (a ``nonzero`` inside); ``equal`` (a bool).
- synchronising only with ``check_errors=True``: ``linalg_cholesky_ex``, ``linalg_inv_ex``,
  ``_linalg_solve_ex``, ``linalg_lu_factor_ex``, ``linalg_ldl_factor_ex``;
- not synchronising: ``linalg_qr`` (geqrf's ``info`` only flags bad arguments and is checked in debug builds
  only; cuBLAS batched or cuSOLVER on CUDA), ``linalg_solve_triangular``, ``linalg_lu_solve``, ``_linalg_det``,
  ``_linalg_slogdet``, and the ``_ex`` ops above with ``check_errors=False`` (their defaults).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_MATMULS = {_aten.mm: (0, 1), _aten.bmm: (0, 1), _aten.addmm: (1, 2), _aten.baddbmm: (1, 2)}
_COPIES = (_aten._to_copy, _aten.copy_, _aten.to, _aten._copy_from)

_ALWAYS = ("_linalg_check_errors", "_linalg_eigh", "_linalg_svd", "linalg_eig", "linalg_eigvals", "linalg_lstsq",
           "cholesky", "cholesky_inverse", "cholesky_solve", "linalg_pinv", "nonzero", "masked_select", "_unique",
           "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive", "bincount", "equal")
_CHECKED = ("linalg_cholesky_ex", "linalg_inv_ex", "_linalg_solve_ex", "linalg_lu_factor_ex", "linalg_ldl_factor_ex")


def _argument(func, args: tuple, kwargs: dict, name: str, default: object = None) -> object:  # noqa: ANN001
    """The value of argument ``name`` of an aten call, positional or keyword."""
    if name in kwargs:
        return kwargs[name]
    for i, argument in enumerate(func._schema.arguments):
        if argument.name == name:
            return args[i] if i < len(args) else default
    return default


def _always(func, args, kwargs) -> bool:  # noqa: ANN001
    return True


def _checks_errors(func, args, kwargs) -> bool:  # noqa: ANN001
    return bool(_argument(func, args, kwargs, "check_errors", False))


def _boolean_index(func, args, kwargs) -> bool:  # noqa: ANN001
    indices = _argument(func, args, kwargs, "indices") or ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _sized_repeats(func, args, kwargs) -> bool:  # noqa: ANN001
    return func._overloadname in ("Tensor", "self_Tensor") and _argument(func, args, kwargs, "output_size") is None


def _range_from_data(func, args, kwargs) -> bool:  # noqa: ANN001
    return _argument(func, args, kwargs, "min", 0) == _argument(func, args, kwargs, "max", 0)


#: aten op name -> whether a call ``(func, args, kwargs)`` synchronises on CUDA (see the module docstring).
SYNCING_OPS: dict[str, Callable[..., bool]] = {
    **dict.fromkeys(_ALWAYS, _always), **dict.fromkeys(_CHECKED, _checks_errors),
    **dict.fromkeys(("index", "index_put", "index_put_", "_index_put_impl_"), _boolean_index),
    "repeat_interleave": _sized_repeats, "histc": _range_from_data,
}


def _device(x: object) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


class OpAudit(TorchDispatchMode):
    """Dispatch mode that counts matmul FLOPs by dtype, host reads, copies from the host, device syncs and ops;
    ``kernels`` counts the ops that do work (not views or reshapes, which only change a tensor's metadata)."""

    def __init__(self) -> None:
        super().__init__()
        self.matmul_flops: Counter[torch.dtype] = Counter()
        self.other_flops = 0
        self.host_reads = 0
        self.host_copies = 0
        self.device_syncs = 0
        self.sync_ops: Counter[str] = Counter()
        self.ops = 0
        self.kernels = 0
        self.op_names: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        packet = func.overloadpacket
        self.ops += 1
        self.kernels += not (func.is_view or packet is _aten._unsafe_view)
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
            self.device_syncs += 1
            if args[0].device.type == "meta":  # nothing to read: answer 0 / False so the caller can go on
                return False if args[0].dtype == torch.bool else 0
        check = SYNCING_OPS.get(packet.__name__)
        if check is not None and check(func, args, kwargs):
            self.device_syncs += 1
            self.sync_ops[packet.__name__] += 1
        if packet in _COPIES:
            src = args[1] if packet is _aten.copy_ else args[0]
            dst = args[0] if packet is _aten.copy_ else kwargs.get("device")
            if _device(src) is not None and dst is not None:
                dst_type = dst.device.type if isinstance(dst, torch.Tensor) else torch.device(dst).type
                self.host_copies += _device(src).type == "cpu" and dst_type != "cpu"
                self.device_syncs += _device(src).type not in ("cpu", "meta") and dst_type == "cpu"
        return func(*args, **kwargs)

    @property
    def float64_matmul_flops(self) -> int:
        return self.matmul_flops.get(torch.float64, 0)

    def total_matmul_flops(self) -> int:
        return sum(self.matmul_flops.values())
