"""Learning-rate schedules as pure functions of the step (so a resumed run needs no scheduler state).

With warmup W, total T and floor r = min_lr_ratio, the multiplier of the peak learning rate at step s (0-based) is
    warmup (s < W):   (s + 1) / W
    cosine:           r + (1 - r) (1 + cos(pi p)) / 2,         p = (s - W) / (T - W)
    wsd:              1 until the last ``decay_frac`` of steps, then r + (1 - r) (1 - sqrt(q)),
                      q = progress through the decay phase (the SPECTRA paper's 20% sqrt decay)
    constant:         1
"""

from __future__ import annotations

import math


def lr_factor(step: int, *, total: int, warmup: int, schedule: str = "cosine", min_lr_ratio: float = 0.1,
              decay_frac: float = 0.2) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(decay_frac * total))
        decay_start = max(warmup, total - decay_steps)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / max(1, total - decay_start))
        return min_lr_ratio + (1 - min_lr_ratio) * (1 - math.sqrt(progress))
    raise ValueError(f"schedule must be 'cosine', 'wsd' or 'constant', got {schedule!r}")
