"""Spectral pre-clipping of gradients (SPECTRA, Jiang, Semenov, Stich 2026, SPEC 1.5).

Per parameter with at least 2 dims, g <- clip_c(g) (the soft clip by default), in place, in the style of
torch.nn.utils.clip_grad_norm_. Call it after backward (and after the data-parallel all-reduce), before
global L2 clipping and before optimizer.step(). The paper's default c_pre is 0.1, with the same warmup rule
as post-clipping; the authors recommend not combining it with post-clipping by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .optim._validate import check_choice, check_positive
from .optim.threshold_schedule import ClipSchedule
from .optim.transforms import CLIP_KINDS, check_method, spectral_transform


def clip_grad_spectral_(parameters: Tensor | Iterable[Tensor], c: float, *, clip: str = "soft",
                        method: str = "auto", steps: int | None = None, dtype: torch.dtype | None = None,
                        include_vectors: bool = False, schedule: ClipSchedule | None = None,
                        step: int | None = None, lr: float | None = None,
                        peak_lr: float | None = None) -> Tensor:
    """Spectrally clip the gradients of ``parameters`` in place; return the largest sigma_max estimate.

    Args:
        parameters: a tensor or an iterable of tensors (e.g. ``model.parameters()``); those without a
            gradient are skipped.
        c: threshold > 0 (the paper's default for pre-clipping is 0.1).
        clip: "soft" (sigma / sqrt(1 + sigma^2/c^2)) | "hard" (min(sigma, c)) | "normalize" (sigma -> 1).
        method, steps, dtype: the matrix function's method, iteration count and compute dtype.
        include_vectors: also clip 1-D gradients with the vector rule (default: matrices only, as the paper).
        schedule, step, lr, peak_lr: the threshold schedule of the optimizers (c_t = c * warmup factor *
            decay factor, see ``spectrakit.optim.ClipSchedule``). Stateless: ``step`` (0-based) is required, and
            when ``schedule.warmup`` is on, ``schedule.warmup_steps``, ``lr`` and ``peak_lr`` are required.

    Returns:
        A scalar tensor: the largest sigma_max estimate over the clipped gradients before clipping (the bound
        the method computes; exact for method="svd"), zero when nothing was clipped. No host sync.
    """
    check_positive(c, "c")
    check_choice(clip, "clip", CLIP_KINDS)
    check_method(clip, method, "method")
    c_t = float(c)
    if schedule is not None:
        if step is None:
            raise ValueError("step is required when a schedule is given")
        if schedule.warmup:
            if schedule.warmup_steps is None:
                raise ValueError("schedule.warmup_steps is required for clip_grad_spectral_ (it keeps no state to "
                                 "detect the end of warmup); or pass a schedule with warmup=False")
            if lr is None or peak_lr is None:
                raise ValueError("lr and peak_lr are required when the schedule has a warmup")
            check_positive(peak_lr, "peak_lr")
        c_t *= schedule.factor(step, lr if lr is not None else 1.0, peak_lr if peak_lr is not None else 1.0)[0]
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None and (p.dim() >= 2 or include_vectors)]
    peaks = []
    for g in grads:
        if g.is_sparse:
            raise TypeError("clip_grad_spectral_ does not support sparse gradients")
        if c_t == 0:
            g.zero_()
            continue
        clipped, bound = spectral_transform(g, clip, c_t, method=method, steps=steps, dtype=dtype)
        if clipped is not g:
            g.copy_(clipped)
        peaks.append(bound.detach().amax().float())
    if not peaks:
        device = grads[0].device if grads else torch.device("cpu")
        return torch.zeros((), device=device)
    return torch.stack([p.to(peaks[0].device) for p in peaks]).amax()
