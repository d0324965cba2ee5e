"""The pre-training harness: a LLaMA-style model, the embedded corpus and token cache, the training loop,
checkpoints, spectral diagnostics, optimizer comparisons and sampling (``spectrakit train | compare | sample``).

The names below load on first use, so the command line resolves and checks settings without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"TrainConfig": ".config", "PRESETS": ".model_config", "ModelConfig": ".model_config",
         "Transformer": ".model", "RunResult": ".trainer", "Trainer": ".trainer"}

__all__ = ["PRESETS", "ModelConfig", "RunResult", "Trainer", "TrainConfig", "Transformer"]

if TYPE_CHECKING:
    from .config import TrainConfig
    from .model import Transformer
    from .model_config import PRESETS, ModelConfig
    from .trainer import RunResult, Trainer


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
