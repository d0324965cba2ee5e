"""What the hardware does fast: the one place that decides whether bfloat16 matmuls pay off on a device.

bfloat16 products are the fast choice where the device has bfloat16 matrix units: CUDA GPUs (tensor cores) and
CPUs with AMX tiles (there bf16 matmuls run 7-15x faster than float32). On other CPUs (AVX2, AVX-512 without
AMX) they run 20-100x slower than float32, so float32 is the fast choice there.
"""

from __future__ import annotations

import torch

_AMX = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


@torch.compiler.assume_constant_result  # a constant of the machine: torch.compile needs no graph break for it
def _cpu_has_amx() -> bool:
    return _AMX


def fast_bfloat16_matmul(device: torch.device) -> bool:
    """True where bfloat16 matmuls are faster than float32 ones: CUDA, and CPUs with AMX tiles."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_amx()
