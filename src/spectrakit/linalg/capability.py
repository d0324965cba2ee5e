"""What the hardware does fast: the one place that decides whether bfloat16 matmuls pay off on a device.

bfloat16 products are the fast choice where the device has bfloat16 matrix units: CUDA GPUs (tensor cores) and
CPUs with AMX tiles (there bf16 matmuls run 7-15x faster than float32). On other CPUs (AVX2, AVX-512 without
AMX) they run 20-100x slower than float32, so float32 is the fast choice there.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _cpu_has_amx() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def fast_bfloat16_matmul(device: torch.device) -> bool:
    """True where bfloat16 matmuls are faster than float32 ones: CUDA, and CPUs with AMX tiles."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _cpu_has_amx()
