"""spectrakit: spectral optimizers for LLM pre-training (SPECTRA, Muon, SSO, spike-aware) in PyTorch."""

from . import linalg, optim
from .optim import (
    SSO,
    AdEMAMix,
    ClipSchedule,
    Mars,
    Muon,
    MuonSphere,
    Signum,
    Spectra,
    SpectraWrapper,
    SpikeAware,
    spectral_init_,
)
from .preclip import clip_grad_spectral_

__version__ = "0.1.0"
__all__ = ["SSO", "AdEMAMix", "ClipSchedule", "Mars", "Muon", "MuonSphere", "Signum", "Spectra", "SpectraWrapper",
           "SpikeAware", "__version__", "clip_grad_spectral_", "linalg", "optim", "spectral_init_"]
