"""spectrakit: spectral optimizers for LLM pre-training (SPECTRA, Muon, SSO, spike-aware) in PyTorch."""

from . import linalg

__version__ = "0.1.0"
__all__ = ["linalg", "__version__"]
