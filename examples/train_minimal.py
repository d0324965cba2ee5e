"""SPECTRA in a plain PyTorch loop: a character-level language model on a paragraph of text.

    python examples/train_minimal.py --steps 300 --clip-c 10
"""

import argparse

import torch
from torch import nn

from spectrakit.optim import Spectra

TEXT = ("Spectral clipping caps the singular values of each update matrix at a threshold c. Directions far "
        "below c pass almost unchanged, a few spiking directions are held near c, and the weight decay keeps "
        "the spectral norm of every weight bounded. ") * 3


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip-c", type=float, default=10.0, help="SPECTRA's threshold c")
    parser.add_argument("--context", type=int, default=8, help="characters seen before each prediction")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    vocab = sorted(set(TEXT))
    windows = torch.tensor([vocab.index(ch) for ch in TEXT]).unfold(0, args.context + 1, 1)  # (N, context + 1)
    model = nn.Sequential(nn.Embedding(len(vocab), 32), nn.Flatten(), nn.Linear(32 * args.context, 128),
                          nn.GELU(), nn.Linear(128, len(vocab)))
    # One optimizer for the whole model: matrices take the clipped AdamW step, vectors the smooth vector rule.
    optimizer = Spectra(model, lr=args.lr, weight_decay=0.1, clip_c=args.clip_c)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    print(optimizer.routing_report())

    losses = []
    for step in range(args.steps):
        batch = windows[torch.randint(len(windows), (64,))]
        loss = nn.functional.cross_entropy(model(batch[:, :-1]), batch[:, -1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.3f}")
    return losses


if __name__ == "__main__":
    main()
