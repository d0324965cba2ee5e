"""End-to-end training on a tiny model: loss falls, resume is exact, checkpoints are atomic, signals save."""

import json
import math
import os
import signal

import pytest
import torch

import spectrakit.train.checkpoint as checkpoint_mod
import spectrakit.train.trainer as trainer_mod
from spectrakit.train import TrainConfig, Trainer
from spectrakit.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spectrakit.train.data import prepare_data
from spectrakit.train.metrics import read_jsonl
from spectrakit.train.optimizers import OPTIMIZERS, build_optimizer, optimizer_class
from spectrakit.train.schedule import lr_factor

QUIET = dict(log=lambda _msg: None)


pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def data(cache_dir):
    return prepare_data(None, vocab_size=512, cache_dir=cache_dir, corpus_fraction=0.02, log=lambda _m: None)


def tiny(tmp_path, cache_dir, **overrides):
    settings = dict(optimizer="adamw", lr=3e-3, vocab_size=512, d_model=32, n_layers=2, n_heads=2, seq_len=32,
                    batch_size=8, steps=8, corpus_fraction=0.02, cache_dir=str(cache_dir), out_dir=str(tmp_path),
                    run_name="run", progress=False, plots=False, eval_batches=2, log_every=1, eval_every=0,
                    diag_every=0, ckpt_every=0, threads=1)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_loss_decreases(tmp_path, cache_dir, data):
    cfg = tiny(tmp_path, cache_dir, steps=40, lr=1e-2, eval_every=20, diag_every=20, plots=True)
    result = Trainer(cfg, data=data, **QUIET).run()
    rows = read_jsonl(result.run_dir / "metrics.jsonl")
    val = [r["val_loss"] for r in rows if r["kind"] == "val"]
    train = [r["train_loss"] for r in rows if r["kind"] == "train"]
    assert abs(val[0] - math.log(512)) < 0.3  # untrained: about uniform
    assert val[-1] < val[0] - 1.0 and sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 1.0
    assert result.final_val_loss == val[-1] and result.exit_code == 0
    for name in ("config.json", "metrics.csv", "metrics.jsonl", "diagnostics.jsonl", "summary.json",
                 "tokenizer.json", "loss.png", "spectral_norms.png", "grad_spectra.png", "checkpoints/last.pt"):
        assert (result.run_dir / name).is_file(), name
    resolved = json.loads((result.run_dir / "config.json").read_text())
    assert resolved["config"]["steps"] == 40 and resolved["model"]["d_model"] == 32
    csv_lines = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,kind,tokens,lr,train_loss") and len(csv_lines) == 1 + 40 + 3


def test_diagnostics_match_exact_svd(tmp_path, cache_dir, data):
    cfg = tiny(tmp_path, cache_dir, steps=2, diag_every=1)
    trainer = Trainer(cfg, data=data, **QUIET)
    trainer.run()
    records = read_jsonl(trainer.run_dir / "diagnostics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    last = records[-1]
    W = trainer.model.layers[0].mlp.up_proj.weight.detach()
    entry = last["layers"]["layers.0.mlp.up_proj.weight"]
    assert entry["weight_spectral"] == pytest.approx(torch.linalg.svdvals(W.double())[0].item(), rel=1e-3)
    assert entry["weight_frobenius"] == pytest.approx(W.norm().item(), rel=1e-5)
    assert entry["grad_spike_ratio"] >= 1.0 and entry["update_spectral"] > 0
    spectrum = last["grad_spectra"]["layers.0.mlp.up_proj.weight"]
    assert spectrum == sorted(spectrum, reverse=True) and len(spectrum) == 32
    assert set(last["activations"]) == {"layers.0", "layers.1"}
    assert all(a["absmax"] >= a["rms"] > 0 for a in last["activations"].values())
    diag_rows = [r for r in read_jsonl(trainer.run_dir / "metrics.jsonl") if r["kind"] == "diag"]
    assert diag_rows[-1]["max_weight_spectral"] == max(e["weight_spectral"] for e in last["layers"].values())


def _interrupt_at(monkeypatch, step_to_interrupt):
    real = trainer_mod.train_batch

    def batch(*args, **kwargs):
        if kwargs["step"] == step_to_interrupt and kwargs["micro"] == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_batch", batch)


@pytest.mark.parametrize("name,overrides", [("adamw", {}), ("spectra-adamw", {"grad_accum": 2, "schedule": "wsd"})])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, cache_dir, data, monkeypatch, name, overrides):
    if name != "adamw":
        try:
            optimizer_class(name)
        except ValueError:
            pytest.skip(f"{name} is not available in this installation")
    settings = dict(optimizer=name, steps=8, diag_every=3, eval_every=4, **overrides)
    straight = Trainer(tiny(tmp_path / "a", cache_dir, **settings), data=data, **QUIET)
    straight.run()
    _interrupt_at(monkeypatch, 4)  # the signal arrives during step index 4 -> checkpoint after 5 steps
    first = Trainer(tiny(tmp_path / "b", cache_dir, **settings), data=data, **QUIET)
    result = first.run()
    assert result.signal == signal.SIGTERM and result.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(result.run_dir)["step"] == 5
    monkeypatch.undo()
    # a crashed run may have logged past its checkpoint: those records are dropped on resume
    with (result.run_dir / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 6, "kind": "train", "train_loss": 99.0}) + "\n")
    resumed = Trainer(tiny(tmp_path / "b", cache_dir, **settings), resume=result.run_dir, data=data, **QUIET)
    assert resumed.step == 5
    resumed.run()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    keep = ("step", "kind", "train_loss", "val_loss", "lr", "max_weight_spectral")
    rows_a = [{k: r.get(k) for k in keep} for r in read_jsonl(straight.run_dir / "metrics.jsonl")]
    rows_b = [{k: r.get(k) for k in keep} for r in read_jsonl(resumed.run_dir / "metrics.jsonl")]
    assert rows_a == rows_b


def test_checkpoint_write_is_atomic_under_a_crash(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(3)})
    before = path.read_bytes()

    def crashing_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_corrupt_foreign_and_mismatched_checkpoints_are_clear_errors(tmp_path, cache_dir, data):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no checkpoint in run folder"):
        load_checkpoint(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or not a spectrakit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a spectrakit-checkpoint-v1 checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    run = Trainer(tiny(tmp_path, cache_dir, steps=2), data=data, **QUIET).run()
    ckpt = run.run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run.run_dir)
    run = Trainer(tiny(tmp_path, cache_dir, steps=2, run_name="other"), data=data, **QUIET).run()
    with pytest.raises(CheckpointError, match="made for another model"):
        Trainer(tiny(tmp_path, cache_dir, steps=2, run_name="other", d_model=64), resume=run.run_dir, data=data,
                **QUIET)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        Trainer(tiny(tmp_path, cache_dir, steps=2, run_name="other"), data=data, **QUIET)


def test_checkpoints_load_without_unpickling_code(tmp_path, cache_dir, data):
    run = Trainer(tiny(tmp_path, cache_dir, steps=1), data=data, **QUIET).run()
    path = run.run_dir / "checkpoints" / "last.pt"
    torch.load(path, weights_only=True)  # would raise if anything but tensors and plain containers were inside

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "spectrakit-checkpoint-v1", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt or not a spectrakit checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_name_trains_three_steps(tmp_path, cache_dir, data, name):
    try:
        optimizer_class(name)
    except ValueError as exc:
        assert "does not provide" in str(exc)
        pytest.skip(f"{name}: class not available yet")
    result = Trainer(tiny(tmp_path, cache_dir, optimizer=name, lr=None, steps=3, diag_every=2), data=data,
                     **QUIET).run()
    assert result.steps_done == 3 and math.isfinite(result.final_val_loss)


def test_pre_clip_runs_in_the_step(tmp_path, cache_dir, data, monkeypatch):
    import spectrakit

    if not hasattr(spectrakit, "clip_grad_spectral_"):
        pytest.skip("clip_grad_spectral_ not available yet")
    calls = []
    real = spectrakit.clip_grad_spectral_

    def spy(params, c, **kw):
        params = list(params)
        calls.append((c, all(p.ndim == 2 for p in params)))
        return real(params, c, **kw)

    monkeypatch.setattr(spectrakit, "clip_grad_spectral_", spy)
    cfg = tiny(tmp_path, cache_dir, steps=3, pre_clip=0.1, warmup_steps=2)
    Trainer(cfg, data=data, **QUIET).run()
    # warmup rule: c_t = c * peak / lr_t -> 0.2 at step 0 (lr factor 1/2), then 0.1
    assert [round(c, 6) for c, _ in calls] == [0.2, 0.1, 0.1] and all(ok for _, ok in calls)


def test_lr_schedules_follow_their_formulas():
    kw = dict(total=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(9, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(10, schedule="cosine", **kw) == pytest.approx(1.0)
    mid = 10 + (99 - 10) / 2
    assert lr_factor(int(mid), schedule="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(
        math.pi * (int(mid) - 10) / 89)))
    assert lr_factor(99, schedule="cosine", **kw) == pytest.approx(0.1)
    # wsd: flat until the last 20 steps, then sqrt decay to the floor
    assert lr_factor(79, schedule="wsd", **kw) == 1.0
    assert lr_factor(84, schedule="wsd", **kw) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(5 / 20)))
    assert lr_factor(99, schedule="wsd", **kw) == pytest.approx(0.1)
    assert lr_factor(50, schedule="constant", **kw) == 1.0
    with pytest.raises(ValueError, match="schedule must be"):
        lr_factor(50, schedule="linear", **kw)


def test_adamw_factory_skips_decay_on_vectors():
    from spectrakit.train.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, seq_len=8))
    opt = build_optimizer("adamw", model, lr=1e-3, weight_decay=0.1, extra={"betas": (0.8, 0.99)})
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    assert decay["betas"] == (0.8, 0.99)
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer("adam", model)
    with pytest.raises(ValueError, match="clip_c applies to the spectra"):
        build_optimizer("adamw", model, clip_c=5.0)
    with pytest.raises(ValueError, match="bad arguments for optimizer 'adamw'"):
        build_optimizer("adamw", model, extra={"momentum": 0.9})


def test_a_diverging_run_stops_with_an_error_code(tmp_path, cache_dir, data):
    trainer = Trainer(tiny(tmp_path, cache_dir, steps=5), data=data, **QUIET)
    trainer.model.register_forward_hook(lambda _m, _i, out: out * float("nan"))
    result = trainer.run()
    assert result.diverged and result.exit_code == 1 and result.steps_done == 1
    assert math.isnan(result.final_val_loss)
    assert json.loads((result.run_dir / "summary.json").read_text())["diverged"] is True


def test_diagnostics_record_the_optimizer_statistics_at_diag_steps_only(tmp_path, cache_dir, data):
    try:
        optimizer_class("spectra-adamw")
    except ValueError:
        pytest.skip("Spectra not available")
    trainer = Trainer(tiny(tmp_path, cache_dir, optimizer="spectra-adamw", steps=4, diag_every=2), data=data,
                      **QUIET)
    trainer.run()
    assert trainer.optimizer.track_stats is False  # restored after each diag step
    records = read_jsonl(trainer.run_dir / "diagnostics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert any(k.startswith("clip_c") for k in records[-1]["optimizer"])


def test_config_round_trips_through_json_with_tuple_arguments():
    cfg = TrainConfig(optimizer="spectra-adamw", opt={"betas": (0.8, 0.99)}, lr=2e-3)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.opt["betas"] == (0.8, 0.99)
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


def test_gradient_spectrum_estimate_for_large_matrices_matches_svd():
    from spectrakit.train.diagnostics import _grad_spectrum

    gen = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(300, 100, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(80, 80, generator=gen, dtype=torch.float64))
    s = torch.cat([torch.tensor([50.0, 30.0, 20.0]), torch.linspace(1.0, 0.5, 77)]).double()
    G = ((U[:, :80] * s) @ V.T).float()
    exact, median = _grad_spectrum(G, exact_limit=1024)
    assert torch.allclose(exact, torch.sort(s, descending=True).values.float()[:64], rtol=1e-4)
    assert median == pytest.approx(s.median().item(), rel=1e-4)
    approx, tail = _grad_spectrum(G, exact_limit=10)  # the block power iteration path
    assert torch.allclose(approx[:3], exact[:3], rtol=1e-3)
    assert len(approx) == 16
    assert tail == pytest.approx(s[16:].pow(2).mean().sqrt().item(), rel=0.05)  # RMS of the tail stands in
