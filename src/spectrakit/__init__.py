"""spectrakit: spectral optimizers for LLM pre-training (SPECTRA, Muon, SSO, spike-aware) in PyTorch.

The public names load on first use (PEP 562), so ``import spectrakit`` and the ``spectrakit`` command's help and
argument errors do not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {**{name: "spectrakit.optim" for name in ("SSO", "AdEMAMix", "ClipSchedule", "Mars", "Muon", "MuonSphere",
                                                   "NorMuon", "Signum", "Spectra", "SpectraWrapper", "SpikeAware",
                                                   "spectral_init_")},
         "clip_grad_spectral_": "spectrakit.preclip"}
_SUBMODULES = ("linalg", "optim")

__all__ = ["SSO", "AdEMAMix", "ClipSchedule", "Mars", "Muon", "MuonSphere", "NorMuon", "Signum", "Spectra",
           "SpectraWrapper", "SpikeAware", "__version__", "clip_grad_spectral_", "linalg", "optim", "spectral_init_"]

if TYPE_CHECKING:
    from . import linalg, optim
    from .optim import (
        SSO,
        AdEMAMix,
        ClipSchedule,
        Mars,
        Muon,
        MuonSphere,
        NorMuon,
        Signum,
        Spectra,
        SpectraWrapper,
        SpikeAware,
        spectral_init_,
    )
    from .preclip import clip_grad_spectral_


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
