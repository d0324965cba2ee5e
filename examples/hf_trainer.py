"""Hugging Face Trainer with a spectrakit optimizer: a byte-level Llama trained on a paragraph of text.

    python examples/hf_trainer.py --steps 200 --optimizer spectra

The model is built from a config (nothing is downloaded). For a pretrained model replace ``build_model`` with
``AutoModelForCausalLM.from_pretrained(name)`` and tokenize with its tokenizer; the optimizer lines stay the same.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from spectrakit.integrations import trainer_optimizer
from spectrakit.optim import Muon, Spectra

TEXT = ("Muon orthogonalizes the momentum of each hidden matrix, so all of its singular values become one. "
        "SPECTRA keeps the small ones and only caps the large ones at c, which is Muon's limit as c shrinks. ")

OPTIMIZERS = {
    # name: (class, constructor arguments); Trainer passes no lr to a class given this way.
    "spectra": (Spectra, {"lr": 1e-2, "clip_c": 10.0}),
    "muon": (Muon, {"lr": 0.02, "adamw_lr": 3e-3}),
}


def build_model(hidden: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


class ByteWindows(torch.utils.data.Dataset):
    """Overlapping windows of the UTF-8 bytes of a text, as input_ids and labels (Trainer shifts the labels)."""

    def __init__(self, text: str, length: int) -> None:
        self.windows = torch.tensor(list(text.encode())).unfold(0, length, length // 2)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="spectra")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model = build_model(args.hidden)
    cls, kwargs = OPTIMIZERS[args.optimizer]
    with tempfile.TemporaryDirectory() as output_dir:
        training = TrainingArguments(output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=8,
                                     warmup_steps=args.steps // 10, lr_scheduler_type="cosine", max_grad_norm=1.0,
                                     logging_steps=max(1, args.steps // 10), save_strategy="no", report_to="none",
                                     use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=training, train_dataset=ByteWindows(TEXT * 4, 32),
                          # Named decay/no-decay groups: routing sees embed_tokens, lm_head and the norms by name.
                          optimizer_cls_and_kwargs=trainer_optimizer(cls, model, weight_decay=args.weight_decay,
                                                                     **kwargs))
        trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


if __name__ == "__main__":
    main()
