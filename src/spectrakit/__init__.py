"""spectrakit: spectral optimizers for LLM pre-training (SPECTRA, Muon, SSO, spike-aware) in PyTorch."""

from . import linalg, optim
from .optim import AdEMAMix, ClipSchedule, Mars, Muon, Signum, Spectra, SpectraWrapper
from .preclip import clip_grad_spectral_

__version__ = "0.1.0"
__all__ = ["AdEMAMix", "ClipSchedule", "Mars", "Muon", "Signum", "Spectra", "SpectraWrapper", "__version__",
           "clip_grad_spectral_", "linalg", "optim"]
