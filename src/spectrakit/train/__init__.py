"""The pre-training harness: a LLaMA-style model, the embedded corpus and token cache, the training loop,
checkpoints, spectral diagnostics, optimizer comparisons and sampling (``spectrakit train | compare | sample``)."""

from .config import TrainConfig
from .model import PRESETS, ModelConfig, Transformer
from .trainer import RunResult, Trainer

__all__ = ["PRESETS", "ModelConfig", "RunResult", "Trainer", "TrainConfig", "Transformer"]
