"""What the hardware does fast: the one place that decides whether bfloat16 matmuls pay off on a device.

bfloat16 products are the fast choice where the device has bfloat16 matrix instructions: CUDA GPUs (tensor
cores), CPUs with AMX tiles (there bf16 matmuls run 7-15x faster than float32) and CPUs with the AVX512-BF16
dot-product instructions (measured 2026-12-03 on an AMD EPYC with AVX512-BF16 and no AMX, one thread: 2.2-2.5x
faster than float32 for 128 x 129 to 768 x 2048 operands, 1.2x for 32 x 33). On other CPUs (AVX2, AVX-512
without BF16) they run 20-100x slower than float32, so float32 is the fast choice there.
"""

from __future__ import annotations

import torch


def _probe(name: str) -> bool:
    return bool(getattr(torch.cpu, name, lambda: False)())


#: The CPU has bfloat16 matrix instructions: AMX tiles or AVX512-BF16 (torch's own probes).
_CPU_BF16_UNITS = _probe("_is_amx_tile_supported") or _probe("_is_avx512_bf16_supported")


@torch.compiler.assume_constant_result  # a constant of the machine: torch.compile needs no graph break for it
def _cpu_has_bf16_units() -> bool:
    return _CPU_BF16_UNITS


def fast_bfloat16_matmul(device: torch.device) -> bool:
    """True where bfloat16 matmuls are faster than float32 ones: CUDA, and CPUs with AMX tiles or AVX512-BF16."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_bf16_units()
