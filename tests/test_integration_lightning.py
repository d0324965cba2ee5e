"""Lightning: configure_optimizers returning a spectrakit optimizer, automatic optimization, LR scheduler."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

from spectrakit.optim import (  # noqa: E402
    SSO,
    AdEMAMix,
    Mars,
    Muon,
    MuonSphere,
    Signum,
    Spectra,
    SpectraWrapper,
    SpikeAware,
)

STEPS = 30


pytestmark = pytest.mark.usefixtures("one_thread")


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, 4, generator=g))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=False)


class _Regression(L.LightningModule):
    def __init__(self, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
        self.make_optimizer = make_optimizer
        self.losses: list[float] = []
        self.lrs: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        self.lrs.append([g["lr"] for g in self.trainer.optimizers[0].param_groups])

    def configure_optimizers(self):
        optimizer = self.make_optimizer(self)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / STEPS)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _fit(module: L.LightningModule, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **trainer_kwargs)
    trainer.fit(module, _data())
    return trainer


@pytest.mark.parametrize("cls, kwargs", [
    (Spectra, {"lr": 3e-2, "clip_c": 1.0, "weight_decay": 0.01}),
    (Muon, {"lr": 0.02, "adamw_lr": 1e-2}),
], ids=["spectra", "muon"])
def test_automatic_optimization_with_closure_and_scheduler(cls, kwargs):
    module = _Regression(lambda m: cls(m, **kwargs))
    trainer = _fit(module)
    assert trainer.global_step == STEPS
    # Lightning hands training_step to optimizer.step as the closure: one call per step means the optimizer ran it.
    assert len(module.losses) == STEPS
    assert sum(module.losses[-5:]) / 5 < 0.6 * sum(module.losses[:5]) / 5, module.losses
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is cls
    assert {r.rule for r in optimizer.routing} >= {"spectral"}
    # The step-interval scheduler moved every group's lr, spectral and AdamW alike.
    first, last = module.lrs[0], module.lrs[-1]
    assert all(abs(b - a * (1 - (STEPS - 1) / STEPS)) < 1e-12 for a, b in zip(first, last))


@pytest.mark.parametrize("make_optimizer", [
    lambda m: SSO(m, lr=0.02, adamw_lr=1e-2),
    lambda m: MuonSphere(m, lr=0.02, adamw_lr=1e-2),
    lambda m: SpikeAware(m, lr=1e-2),
    lambda m: Signum(m, lr=3e-3),
    lambda m: Mars(m, lr=3e-3),
    lambda m: AdEMAMix(m, lr=3e-3),
    lambda m: SpectraWrapper(torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01), clip_c=1.0),
], ids=["sso", "muon_sphere", "spike_aware", "signum", "mars", "ademamix", "spectra_wrapper"])
def test_every_optimizer_trains_under_lightning(make_optimizer):
    module = _Regression(make_optimizer)
    trainer = _fit(module)
    assert len(module.losses) == trainer.global_step == STEPS
    assert sum(module.losses[-5:]) / 5 < 0.75 * sum(module.losses[:5]) / 5, module.losses


def test_checkpoint_resume_restores_optimizer_state(tmp_path):
    module = _Regression(lambda m: Spectra(m, lr=1e-2, clip_c=1.0))
    trainer = _fit(module)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    saved = trainer.optimizers[0].state_dict()

    resumed = _Regression(lambda m: Spectra(m, lr=1e-2, clip_c=1.0))
    trainer2 = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer2.fit(resumed, _data(), ckpt_path=path)  # already at max_steps: restores, then stops
    restored = trainer2.optimizers[0].state_dict()
    assert restored["state"].keys() == saved["state"].keys()
    for key, per_param in saved["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(restored["state"][key][name], value, rtol=0, atol=0)
    for p, q in zip(module.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
