"""Lightning with a spectrakit optimizer: configure_optimizers returns Muon (or SPECTRA) and a cosine schedule.

    python examples/lightning_train.py --steps 300 --optimizer muon

Automatic optimization hands the training step to ``optimizer.step(closure)``; spectrakit's optimizers run it.
"""

from __future__ import annotations

import argparse
import math

import lightning as L
import torch
from torch import nn

from spectrakit.optim import Muon, Spectra

TEXT = ("Lightning calls configure_optimizers once, then steps the optimizer and the scheduler for you. "
        "Nothing about a spectral optimizer changes that loop: it is a torch.optim.Optimizer like any other. ") * 3


class CharModel(L.LightningModule):
    """Predict the next character from the previous ``context`` ones with a two-layer MLP."""

    def __init__(self, vocab: int, context: int, optimizer: str, steps: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab, 32)
        self.hidden = nn.Linear(32 * context, 128)
        self.head = nn.Linear(128, vocab)  # named "head": Muon's routing sends it to AdamW
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        logits = self.head(nn.functional.gelu(self.hidden(self.embed(inputs).flatten(1))))
        loss = nn.functional.cross_entropy(logits, targets)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> dict:
        if self.hparams.optimizer == "muon":  # embeddings, head and biases go to Muon's internal AdamW
            optimizer = Muon(self, lr=0.02, weight_decay=0.01, adamw_lr=3e-3)
        else:
            optimizer = Spectra(self, lr=3e-3, weight_decay=0.1, clip_c=10.0)
        steps = self.hparams.steps
        cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizer", choices=("muon", "spectra"), default="muon")
    parser.add_argument("--context", type=int, default=8)
    args = parser.parse_args(argv)
    L.seed_everything(0, verbose=False)

    vocab = sorted(set(TEXT))
    windows = torch.tensor([vocab.index(ch) for ch in TEXT]).unfold(0, args.context + 1, 1)
    data = torch.utils.data.TensorDataset(windows[:, :-1], windows[:, -1])
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
    model = CharModel(len(vocab), args.context, args.optimizer, args.steps)
    trainer = L.Trainer(max_steps=args.steps, accelerator="auto", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)
    print(trainer.optimizers[0].routing_report())
    print(f"loss: first {model.losses[0]:.3f}, last {model.losses[-1]:.3f}")
    return model.losses


if __name__ == "__main__":
    main()
