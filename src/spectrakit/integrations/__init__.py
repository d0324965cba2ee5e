"""Helpers for training with spectrakit through other libraries (Hugging Face ``Trainer``).

Lightning and ``torch.compile`` need no helper: see the "Hugging Face, Lightning, torch.compile" guide.
"""

from .hf import decay_param_groups, trainer_optimizer

__all__ = ["decay_param_groups", "trainer_optimizer"]
