"""End-to-end training on a tiny model: loss falls, resume is exact, checkpoints are atomic, signals save."""

import json
import math
import os
import signal

import _svd_oracle as oracle
import pytest
import torch

import spectrakit.train.checkpoint_file as checkpoint_mod
import spectrakit.train.trainer as trainer_mod
from spectrakit.registry import available
from spectrakit.train import TrainConfig, Trainer
from spectrakit.train.checkpoint_file import CheckpointError, load_checkpoint, save_checkpoint
from spectrakit.train.data import prepare_data
from spectrakit.train.lr_schedule import lr_factor
from spectrakit.train.metrics import read_jsonl
from spectrakit.train.optimizers import build_optimizer, optimizer_arguments, optimizer_class

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
                    diag_every=0, ckpt_every=0, threads=1, dtype="float32")
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
    assert entry["weight_spectral"] == pytest.approx(oracle.spectral_norm(W).item(), rel=1e-3)
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
    settings = dict(optimizer=name, steps=8, diag_every=3, eval_every=4, log_every=3, **overrides)
    straight = Trainer(tiny(tmp_path / "a", cache_dir, **settings), data=data, **QUIET)
    straight.run()
    _interrupt_at(monkeypatch, 4)  # the signal arrives during step index 4 -> checkpoint after 5 steps
    first = Trainer(tiny(tmp_path / "b", cache_dir, **settings), data=data, **QUIET)
    result = first.run()
    assert result.signal == signal.SIGTERM and result.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(result.run_dir)["step"] == 5
    monkeypatch.undo()
    # a crashed run may have logged past its checkpoint, and its last line may be half written (kill -9, disk
    # full): on resume each log is cut to its last complete record at or before the checkpoint's step
    with (result.run_dir / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 6, "kind": "train", "train_loss": 99.0}) + "\n" + '{"step": 7, "kind": "tr')
    with (result.run_dir / "diagnostics.jsonl").open("a") as fh:
        fh.write('{"step": 6, "layers": {"a": [1, 2')
    messages = []
    resumed = Trainer(tiny(tmp_path / "b", cache_dir, **settings), resume=result.run_dir, data=data,
                      log=messages.append)
    assert resumed.step == 5
    resumed.run()
    assert strict_json(result.run_dir / "summary.json")["status"] == "finished"
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert any("metrics.jsonl: resuming at step 5: kept" in m and "line 6 is incomplete" in m for m in messages)
    assert any("diagnostics.jsonl: resuming at step 5: kept 1 records, dropped 1" in m for m in messages)
    # the logs read exactly like the uninterrupted run's (no extra record at the stop step): all but timings
    timing = {"tokens_per_s", "elapsed_s", "seconds"}
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        rows_a = [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(straight.run_dir / name)]
        rows_b = [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(resumed.run_dir / name)]
        assert rows_a == rows_b, name
    csv_a, csv_b = ((run / "metrics.csv").read_text().splitlines() for run in (straight.run_dir, resumed.run_dir))
    assert [line.split(",")[:5] for line in csv_a] == [line.split(",")[:5] for line in csv_b]


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


@pytest.mark.parametrize("name", available())
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


@pytest.mark.parametrize("name", ["sso", "muon-sphere"])
def test_sphere_optimizers_give_each_attention_head_its_own_sphere(name):
    """SPEC section 4: q/k/v split per head (k and v by the key/value heads under grouped-query attention); the
    rest of the hidden matrices whole; embeddings, head and vectors to AdamW. ``heads`` in extra opts out."""
    from spectrakit.train.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=8))
    opt = build_optimizer(name, model)
    by_heads = {g.get("heads"): g["param_names"] for g in opt.param_groups if g["rule"] == "spectral"}
    assert sorted(by_heads[4]) == [f"layers.{i}.attn.q_proj.weight" for i in range(2)]
    assert sorted(by_heads[2]) == sorted(f"layers.{i}.attn.{w}_proj.weight" for i in range(2) for w in "kv")
    assert sorted(by_heads[None]) == sorted(f"layers.{i}.{m}_proj.weight" for i in range(2)
                                            for m in ("attn.o", "mlp.gate", "mlp.up", "mlp.down"))
    adamw = [n for g in opt.param_groups if g["rule"] == "adamw" for n in g["param_names"]]
    assert "embed.weight" in adamw and "lm_head.weight" in adamw
    x = torch.randint(0, 64, (2, 9))
    model(x[:, :-1], x[:, 1:]).backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    whole = build_optimizer(name, model, extra={"heads": 1})
    assert {g.get("heads") for g in whole.param_groups if g["rule"] == "spectral"} == {1}


def strict_json(path):
    """A JSON file read by a strict parser (no NaN / Infinity)."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def finite_checkpoint(run_dir):
    ckpt = load_checkpoint(run_dir)
    tensors = list(ckpt["model"].values()) + [t for state in ckpt["optimizer"]["state"].values()
                                              for t in state.values() if isinstance(t, torch.Tensor)]
    return ckpt["step"], all(bool(torch.isfinite(t.float()).all()) for t in tensors)


def test_a_diverging_run_stops_with_an_error_code(tmp_path, cache_dir, data):
    messages = []
    trainer = Trainer(tiny(tmp_path, cache_dir, steps=5, plots=True), data=data, log=messages.append)
    trainer.model.register_forward_hook(lambda _m, _i, out: out * float("nan"))
    result = trainer.run()
    assert result.diverged and result.exit_code == trainer_mod.EXIT_DIVERGED == 3
    assert result.steps_done == 0  # the divergence is found before the update: no step is applied
    assert math.isnan(result.final_val_loss)
    assert any("step 1: the training loss is nan" in m and "stopping (try a lower --lr" in m
               and "no checkpoint was written" in m for m in messages)
    summary = strict_json(result.run_dir / "summary.json")
    assert summary["status"] == "diverged" and summary["diverged"] is True and summary["final_val_loss"] is None
    assert (result.run_dir / "loss.png").is_file() and not (result.run_dir / "checkpoints" / "last.pt").exists()


def test_a_diverging_run_never_overwrites_the_last_good_checkpoint(tmp_path, cache_dir, data):
    """--optimizer adamw --lr 1e3 --ckpt-every 1 --grad-clip 0 left last.pt with every tensor non-finite."""
    messages = []
    cfg = tiny(tmp_path, cache_dir, steps=30, lr=1e3, grad_clip=0.0, ckpt_every=1, warmup_steps=0, log_every=5)
    result = Trainer(cfg, data=data, log=messages.append).run()
    assert result.diverged and result.exit_code == 3 and result.steps_done < 30
    step, finite = finite_checkpoint(result.run_dir)
    assert finite and step <= result.steps_done
    assert any(f"the last good checkpoint is step {step}" in m for m in messages)
    assert strict_json(result.run_dir / "summary.json")["checkpoint_step"] == step


def test_non_finite_weights_are_never_saved(tmp_path, cache_dir, data):
    """The loss of step 3 is finite, but its update leaves an Inf in a weight: the save after it refuses."""
    messages = []
    trainer = Trainer(tiny(tmp_path, cache_dir, steps=6, ckpt_every=1), data=data, log=messages.append)
    weight = trainer.model.layers[1].mlp.down_proj.weight

    def poison(optimizer, _args, _kwargs):
        if trainer.step == 2:  # the update of step 3
            with torch.no_grad():
                weight[0, 0] = float("inf")

    trainer.optimizer.register_step_post_hook(poison)
    result = trainer.run()
    assert result.diverged and result.exit_code == 3 and result.steps_done == 3
    assert finite_checkpoint(result.run_dir) == (2, True)
    assert any("step 3: non-finite values in layers.1.mlp.down_proj.weight" in m and "not saving them" in m
               for m in messages)


def test_our_optimizers_divergence_ends_in_the_harness_message(tmp_path, cache_dir, data, monkeypatch):
    """NonFiniteGradientError from a spectrakit optimizer's own check ends the run as a divergence."""
    from spectrakit.optim.spectral_optimizer import NonFiniteGradientError

    messages = []
    trainer = Trainer(tiny(tmp_path, cache_dir, steps=4, ckpt_every=1), data=data, log=messages.append)
    real = trainer.optimizer.step

    def step(*args, **kwargs):
        if trainer.step == 2:
            raise NonFiniteGradientError("non-finite gradient in parameter(s) " + ", ".join(["w"] * 50))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", step)
    result = trainer.run()
    assert result.diverged and result.exit_code == 3 and finite_checkpoint(result.run_dir) == (2, True)
    assert any("step 3: the optimizer met non-finite values" in m and "stopping (try a lower --lr" in m
               for m in messages)
    assert strict_json(result.run_dir / "summary.json")["status"] == "diverged"


def test_an_error_mid_run_still_writes_the_summary_and_plots(tmp_path, cache_dir, data, monkeypatch):
    real = trainer_mod.train_batch

    def batch(*args, **kwargs):
        if kwargs["step"] == 2:
            raise RuntimeError("the data went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_batch", batch)
    trainer = Trainer(tiny(tmp_path, cache_dir, steps=4, plots=True), data=data, **QUIET)
    with pytest.raises(RuntimeError, match="the data went away"):
        trainer.run()
    summary = strict_json(trainer.run_dir / "summary.json")
    assert summary["status"] == "error" and summary["steps_done"] == 2
    assert summary["message"] == "RuntimeError: the data went away"
    assert (trainer.run_dir / "loss.png").is_file() and not (trainer.run_dir / "run.lock").exists()


def test_a_live_run_holds_its_folder(tmp_path, cache_dir, data):
    """Two runs on one folder: the one that does not hold the lock refuses before writing anything."""
    from spectrakit.train.runlock import RunFolderBusy, RunLock

    second = Trainer(tiny(tmp_path, cache_dir, steps=2), data=data, **QUIET)  # both passed __init__: a race
    with RunLock(tmp_path / "run", log=lambda _m: None):  # the first run holds the folder
        with pytest.raises(RunFolderBusy, match=f"run folder {tmp_path / 'run'} is in use by pid {os.getpid()}"):
            second.run()
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.lock"]
        with pytest.raises(RunFolderBusy, match="is in use by pid"):
            Trainer(tiny(tmp_path, cache_dir, steps=2), data=data, **QUIET)
    assert second.run().exit_code == 0 and not (tmp_path / "run" / "run.lock").exists()


def test_a_flipped_byte_in_a_checkpoint_is_a_corrupt_error(tmp_path, cache_dir, data):
    run = Trainer(tiny(tmp_path, cache_dir, steps=1), data=data, **QUIET).run()
    path = run.run_dir / "checkpoints" / "last.pt"
    raw = bytearray(path.read_bytes())
    weight = load_checkpoint(path)["model"]["layers.0.mlp.up_proj.weight"]
    offset = raw.find(weight.numpy().tobytes()) + 1001
    assert offset > 1000
    raw[offset] ^= 0x10
    path.write_bytes(bytes(raw))
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt: its contents do not match"):
        load_checkpoint(run.run_dir)


@pytest.mark.parametrize("amx", [False, True])
def test_auto_dtype_follows_the_cpu_and_both_branches_train(tmp_path, cache_dir, data, monkeypatch, amx):
    """dtype="auto" is bfloat16 autocast on CPUs with bfloat16 units (AMX, AVX512-BF16), float32 elsewhere: both
    branches run on every machine by patching the capability check; the bfloat16 branch is held to bfloat16
    tolerances."""
    monkeypatch.setattr("spectrakit.linalg.capability._cpu_has_bf16_units", lambda: amx)
    assert trainer_mod.autocast_dtype(torch.device("cpu"), "auto") == (torch.bfloat16 if amx else None)
    assert trainer_mod.autocast_dtype(torch.device("cpu"), "float32") is None
    results = {}
    for dtype in ("auto", "float32"):
        trainer = Trainer(tiny(tmp_path / dtype, cache_dir, steps=3, dtype=dtype), data=data, **QUIET)
        results[dtype] = trainer.run()
        resolved = json.loads((trainer.run_dir / "config.json").read_text())
        assert resolved["autocast"] == ("torch.bfloat16" if amx and dtype == "auto" else "float32")
    rows = {k: [r["train_loss"] for r in read_jsonl(r.run_dir / "metrics.jsonl") if r["kind"] == "train"]
            for k, r in results.items()}
    tol = dict(rtol=2e-2, atol=0.0) if amx else dict(rtol=0.0, atol=0.0)  # bfloat16: 8 mantissa bits
    torch.testing.assert_close(torch.tensor(rows["auto"]), torch.tensor(rows["float32"]), **tol)
    torch.testing.assert_close(torch.tensor(results["auto"].final_val_loss),
                               torch.tensor(results["float32"].final_val_loss), **tol)


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


def test_dtype_arguments_are_named_on_the_command_line():
    """--opt ns_dtype=bfloat16 (or torch.bfloat16) reaches the optimizer as the torch dtype; a bad name is named."""
    assert optimizer_arguments("muon", extra={"ns_dtype": "bfloat16"})["ns_dtype"] is torch.bfloat16
    assert optimizer_arguments("sso", extra={"ns_dtype": "torch.float64"})["ns_dtype"] is torch.float64
    assert optimizer_arguments("spectra-adamw", extra={"clip_dtype": "float32"})["clip_dtype"] is torch.float32
    with pytest.raises(ValueError, match="ns_dtype must name a dtype, one of float32, bfloat16, float16, float64, "
                                         "got 'int8'"):
        optimizer_arguments("muon", extra={"ns_dtype": "int8"})
    opt = build_optimizer("muon", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)),
                          extra={"ns_dtype": "bfloat16"})
    assert [group["ns_dtype"] for group in opt.param_groups if group["rule"] == "spectral"] == [torch.bfloat16]
