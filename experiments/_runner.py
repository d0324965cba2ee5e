"""Train run specifications with the harness's Python API and record one JSON line per finished run.

Per run the record holds: the spec, final validation loss, the loss curves, whether it diverged and how many
loss spikes it had, exact spectral and Frobenius norms of every trained weight matrix, and the gradient-spectrum
statistics of the harness's diagnostics (singular values of raw stochastic gradients relative to their median).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from _study import Budget, RunSpec

from spectrakit.train.config import TrainConfig
from spectrakit.train.data import prepare_data
from spectrakit.train.metrics import read_jsonl
from spectrakit.train.optimizers import optimizer_arguments, optimizer_class
from spectrakit.train.trainer import Trainer

RESULTS = "results.jsonl"
SPIKE_JUMP = 0.3  # nats above the running minimum of the (10-step mean) training loss that count as a spike


def base_config(budget: Budget, out_dir: Path, cache_dir: str | None) -> TrainConfig:
    return TrainConfig(**budget.train_settings(), cache_dir=cache_dir, out_dir=str(out_dir / "runs"))


def load_data(cfg: TrainConfig):
    return prepare_data(cfg.data, vocab_size=cfg.model_config().vocab_size, cache_dir=cfg.cache_dir,
                        corpus_fraction=cfg.corpus_fraction, val_fraction=cfg.val_fraction, log=lambda _m: None)


def count_spikes(losses: list[float], skip: int) -> int:
    """Log points (after the first ``skip``) whose training loss exceeds the running minimum by SPIKE_JUMP."""
    spikes, best = 0, math.inf
    for i, loss in enumerate(losses):
        if i >= skip and math.isfinite(best) and loss > best + SPIKE_JUMP:
            spikes += 1
        best = min(best, loss)
    return spikes


@torch.no_grad()
def weight_norms(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Exact ||W||_2 and ||W||_F of every 2-D parameter (the float64 SVD of a small matrix)."""
    out = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            W = p.detach().double()
            out[name] = {"spectral": float(torch.linalg.matrix_norm(W, ord=2)), "frobenius": float(W.norm())}
    return out


def gradient_spectra(diagnostics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per diagnostics step and matrix: sigma_1..3 / median and the count of sigma_i >= 10 median.

    The median is exact when the harness kept the whole spectrum (min(m, n) <= 64 here); otherwise the record's
    spike ratio gives sigma_1 / median and the other entries are relative to sigma_1 / that ratio.
    """
    out = []
    for record in diagnostics:
        for name, s in record.get("grad_spectra", {}).items():
            ratio = record["layers"].get(name, {}).get("grad_spike_ratio")
            if not s or ratio is None or not math.isfinite(ratio) or ratio <= 0:
                continue
            median = s[0] / ratio
            rel = [x / median for x in s]
            out.append({"step": record["step"], "name": name, "top": rel[:3], "n_ge10": sum(r >= 10 for r in rel),
                        "rank": len(s)})
    return out


def multiplier_groups(named: Iterable[tuple[str, torch.Tensor]], multiplier: Callable[[str, tuple[int, ...]], float],
                      lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Param groups with lr m*lr and weight decay wd/m per multiplier m = multiplier(name, shape), so a tensor's
    step is X <- (1 - lr*wd) X - m*lr*U: the multiplier scales the update, not the decay (as SPECTRA's scale)."""
    by_mult: dict[float, list[tuple[str, torch.Tensor]]] = {}
    for name, p in named:
        by_mult.setdefault(float(multiplier(name, tuple(p.shape))), []).append((name, p))
    return [{"params": members, "lr": m * lr, "weight_decay": weight_decay / m} for m, members in by_mult.items()]


class MultiplierTrainer(Trainer):
    """The harness's Trainer with a per-tensor lr multiplier (``multiplier_groups``): the optimizer it built is
    replaced by the same class and arguments over multiplier param groups; the schedule scales every group."""

    def __init__(self, cfg: TrainConfig, multiplier: Callable[[str, tuple[int, ...]], float], **kw: Any) -> None:
        super().__init__(cfg, **kw)
        lr, wd = self.optimizer.param_groups[0]["lr"], self.optimizer.param_groups[0]["weight_decay"]
        kwargs = optimizer_arguments(cfg.optimizer, lr=lr, weight_decay=wd, clip_c=cfg.clip_c, extra=cfg.opt)
        groups = multiplier_groups(self.module.named_parameters(), multiplier, lr, wd)
        self.optimizer = optimizer_class(cfg.optimizer)(groups, **kwargs)
        self.peak_lrs = [g["lr"] for g in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])


def optimizer_statistics(diagnostics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per diagnostics step: the optimizer's statistics() (SPECTRA: clip_c/group<i>, sigma_max/<name>,
    clipped_fraction/<name>), when it recorded any."""
    return [{"step": r["step"], **r["optimizer"]} for r in diagnostics if r.get("optimizer")]


def run_one(spec: RunSpec, budget: Budget, out_dir: Path, cache_dir: str | None, data=None) -> dict[str, Any]:
    """Train ``spec`` and return its record (a diverged run is a record with diverged=True, not an error)."""
    name, opt = spec.optimizer(budget)
    cfg = replace(base_config(budget, out_dir, cache_dir), optimizer=name, lr=spec.lr, seed=spec.seed, opt=opt,
                  clip_c=spec.clip_c, pre_clip=spec.pre_clip, grad_clip=spec.grad_clip, run_name=spec.name)
    run_dir = Path(cfg.out_dir) / spec.name
    if run_dir.exists():  # a run interrupted earlier: start it again
        shutil.rmtree(run_dir)
    multiplier = spec.multiplier()
    kw = dict(data=data if data is not None else load_data(cfg), log=lambda _m: None)
    trainer = Trainer(cfg, **kw) if multiplier is None else MultiplierTrainer(cfg, multiplier, **kw)
    start = time.perf_counter()
    error = None
    try:
        result = trainer.run()
        if result.signal is not None:  # stopped by SIGINT/SIGTERM: an unfinished run is not recorded
            raise KeyboardInterrupt(f"{spec.name} stopped by signal {result.signal} at step {result.steps_done}")
        final, tokens_per_s = result.final_val_loss, result.tokens_per_s
    except (FloatingPointError, RuntimeError) as exc:  # non-finite gradients (the optimizers raise) or a failed SVD
        error, final, tokens_per_s = f"{type(exc).__name__}: {exc}"[:300], math.nan, math.nan
    wall = time.perf_counter() - start
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    train = [(r["step"], r["train_loss"]) for r in metrics if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in metrics if r.get("kind") == "val"]
    initial = val[0][1] if val else math.nan
    final = final if final is not None else math.nan
    diverged = error is not None or not math.isfinite(final) or final > initial
    warmup_logs = max(1, trainer.cfg.warmup // trainer.cfg.log_every)
    diagnostics = read_jsonl(run_dir / "diagnostics.jsonl")
    record = {"name": spec.name, "spec": asdict(spec), "optimizer": name, "opt": {k: repr(v) for k, v in opt.items()},
              "budget": budget.name, "parameters": trainer.model.num_parameters(),
              "tokens": trainer.tokens, "final_val_loss": final, "initial_val_loss": initial, "diverged": diverged,
              "error": error, "spikes": count_spikes([loss for _, loss in train], skip=warmup_logs),
              "train_curve": train, "val_curve": val, "tokens_per_s": tokens_per_s, "wall_s": wall,
              "weights": weight_norms(trainer.model),
              "grad_spectra": gradient_spectra(diagnostics), "optimizer_stats": optimizer_statistics(diagnostics)}
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the record holds what the report needs
    return json.loads(json.dumps(record, default=float))


def done_runs(out_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in read_jsonl(out_dir / RESULTS)}


_WORKER: dict[str, Any] = {}


def _init_worker(budget: Budget, out_dir: Path, cache_dir: str | None) -> None:
    torch.set_num_threads(1)
    _WORKER.update(budget=budget, out_dir=out_dir, cache_dir=cache_dir,
                   data=load_data(base_config(budget, out_dir, cache_dir)))


def _work(spec: RunSpec) -> dict[str, Any]:
    return run_one(spec, _WORKER["budget"], _WORKER["out_dir"], _WORKER["cache_dir"], _WORKER["data"])


def run_all(specs: Iterable[RunSpec], budget: Budget, out_dir: Path, cache_dir: str | None,
            log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Train the specs not yet in out_dir/results.jsonl (``budget.workers`` processes); return all records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = done_runs(out_dir)
    todo = list({s.name: s for s in specs if s.name not in done}.values())
    if not todo:
        return done
    log(f"{len(todo)} runs to train ({budget.workers} workers)")
    with (out_dir / RESULTS).open("a") as fh:
        if budget.workers <= 1:
            _init_worker(budget, out_dir, cache_dir)
            records = map(_work, todo)
            for record in records:
                _save(fh, record, done, log)
        else:
            ctx = mp.get_context("spawn")
            with ctx.Pool(budget.workers, _init_worker, (budget, out_dir, cache_dir)) as pool:
                for record in pool.imap_unordered(_work, todo):
                    _save(fh, record, done, log)
    return done


def _save(fh, record: dict[str, Any], done: dict[str, dict[str, Any]], log: Callable[[str], None]) -> None:
    fh.write(json.dumps(record) + "\n")
    fh.flush()
    done[record["name"]] = record
    status = "DIVERGED" if record["diverged"] else f"val {record['final_val_loss']:.4f}"
    log(f"{time.strftime('%H:%M:%S')} {record['name']}: {status}, {record['spikes']} spikes, "
        f"{record['wall_s']:.0f} s")
