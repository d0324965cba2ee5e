"""The training loop. One step, top to bottom:

    lr_t = peak lr * lr_factor(t)                                  (pure function of t: resumable)
    for each micro-batch j (data = pure function of (seed, t, j)):  loss_j = CE(model(x_j), y_j) / accum; backward
    [diagnostics on raw gradients every diag_every steps]
    [spectral pre-clip of 2-D gradients, threshold pre_clip * lr_peak / lr_t during warmup]   (SPEC 1.5)
    global L2 clip of the gradient norm to grad_clip
    optimizer.step()                                                (post-clip happens inside SPECTRA optimizers)

Validation loss every eval_every steps on fixed held-out batches; checkpoints every ckpt_every steps, at the end,
and on SIGINT/SIGTERM.

How a run ends: every end writes ``summary.json`` (strict JSON: NaN and Inf become null) with ``status`` and the
plots of what was recorded (unless --no-plots), and ``spectrakit train`` exits with

    0    finished (also: ``--resume`` of a finished run, "nothing to do", which leaves the run untouched)
    1    error (data, checkpoint, disk full, run folder in use, ...); summary status "error" once training began
    2    bad settings or arguments (found before anything is written)
    3    diverged: the loss or gradient norm of a step is non-finite (checked every step, before the update), an
         optimizer raised NonFiniteGradientError, or the weights/optimizer state to be saved are non-finite.
         Nothing non-finite is ever saved: the last good checkpoint is kept.
    128 + N  interrupted by signal N (130 SIGINT, 143 SIGTERM): a checkpoint of the completed step is saved and
         ``--resume RUN`` continues exactly (a second Ctrl-C stops at once, without a checkpoint: 130)

Fault handling: the run folder is locked (``runlock``: a second live run on it refuses, a dead run's lock is taken
over with a message); temporary checkpoint files of dead processes are removed at start; on resume the logs are
cut back to the checkpoint's step (``metrics``) and the partial logging window is restored from the checkpoint,
so a resumed run's logs read exactly like an uninterrupted run's; disk full and corrupt checkpoints are clear
errors (``checkpoint_file``).

Under torchrun (``ctx`` given, ``--parallel ddp|fsdp``; see ``parallel``): the model is wrapped by
``spectrakit.distributed.parallelize`` and spectral optimizers by ``DistributedSpectral``; rank r trains on the
data micro-batches r * grad_accum + j; logged losses are means over ranks; rank 0 alone writes logs and run
files; every rank evaluates all validation batches and takes part in the distributed checkpoint
(``checkpoints/last.dcp``). Spectral diagnostics are off, and --pre-clip is allowed under DDP only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from spectrakit.distributed import DistContext, DistributedSpectral, parallelize
from spectrakit.linalg.capability import fast_bfloat16_matmul
from spectrakit.optim.spectral_optimizer import NonFiniteGradientError, SpectralOptimizer

from . import checkpoint_folder
from .checkpoint_file import LAST, LAST_DCP, CheckpointError, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .config import TrainConfig
from .data import TokenData, prepare_data, train_batch, val_batches
from .diagnostics import SpectralDiagnostics, summarize
from .lr_schedule import lr_factor
from .metrics import MetricsWriter
from .model import Transformer
from .optimizers import build_optimizer
from .parallel import agreed_signal, mean_over_ranks
from .runlock import RunLock, check_free

EXIT_DIVERGED = 3  # the exit codes: see the module docstring
_HINT = "try a lower --lr or --grad-clip"


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    steps_done: int
    final_val_loss: float | None
    tokens_per_s: float
    signal: int | None = None
    diverged: bool = False

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return EXIT_DIVERGED if self.diverged else 0


class _Diverged(Exception):
    """Raised inside the loop; the run ends with status "diverged" and the message."""


def _strict(value: Any) -> Any:
    """``value`` with NaN/Inf floats replaced by None (for json.dumps(..., allow_nan=False))."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """bfloat16 where it is fast (CUDA; CPUs with AMX tiles or AVX512-BF16), else None (float32). Explicit
    choices are kept."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if fast_bfloat16_matmul(device) else None


def default_run_name(cfg: TrainConfig) -> str:
    return f"{cfg.optimizer}-{cfg.preset}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Builds data, model and optimizer from a TrainConfig and runs (or resumes) training in a run folder.

    ``ctx``: this process's place in a torchrun job (``parallel.start``), required when ``cfg.parallel`` is
    "ddp" or "fsdp". ``progress``: an open tqdm bar that this run advances by one per step instead of a bar of its
    own (``compare``'s bar over all its runs); the caller closes it."""

    def __init__(self, cfg: TrainConfig, *, resume: str | Path | None = None, data: TokenData | None = None,
                 log: Callable[[str], None] = print, ctx: DistContext | None = None, progress: Any = None) -> None:
        self.cfg = cfg.validate()
        self.progress = progress
        if (ctx is None) != (cfg.parallel == "none"):
            raise ValueError(f"parallel={cfg.parallel!r} " + ("needs a process group (run under torchrun)"
                                                              if ctx is None else "but a process group was given"))
        self.ctx = ctx
        self.is_main = ctx is None or ctx.is_main
        self.world = 1 if ctx is None else ctx.world_size
        self.log = log if self.is_main else _quiet
        self.checkpoint = load_checkpoint(resume) if resume is not None else None
        if self.checkpoint is not None:
            path = Path(os.path.abspath(self.checkpoint["path"]))
            if path.parent.name != "checkpoints":
                raise CheckpointError(f"checkpoint {self.checkpoint['path']} is not in a run folder "
                                      f"(RUN/checkpoints/{path.name}), so there is no run to continue: pass --resume "
                                      f"RUN, or copy the file to RUN/checkpoints/{LAST} first")
            self.run_dir = path.parent.parent
            self._stamp = _stamp(path)
            if ctx is not None and not self.checkpoint.get("dcp"):
                raise CheckpointError(f"checkpoint {self.checkpoint['path']} was written by a single-process run; "
                                      "resume it without --parallel")
        else:
            self.run_dir = Path(cfg.out_dir).expanduser() / (cfg.run_name or default_run_name(cfg))
        if self.is_main:
            check_free(self.run_dir)  # early; run() takes the lock
        if self.checkpoint is None:
            self._refuse_a_used_folder()
        # a run under torchrun, and every continuation of it, writes distributed checkpoints
        self.dcp = ctx is not None or bool(self.checkpoint and self.checkpoint.get("dcp"))
        self.model_config = cfg.model_config()
        self.device = resolve_device(cfg.device) if ctx is None else ctx.device
        self.amp = autocast_dtype(self.device, cfg.dtype)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cfg.optimizer_arguments()  # a bad --opt fails here, before the data is prepared
        if ctx is not None and not ctx.is_main:
            dist.barrier()  # rank 0 builds the token cache first
        self.data = data if data is not None else prepare_data(
            cfg.data, vocab_size=self.model_config.vocab_size, cache_dir=cfg.cache_dir,
            corpus_fraction=cfg.corpus_fraction, val_fraction=cfg.val_fraction, text_field=cfg.text_field,
            tokenizer_file=cfg.tokenizer, log=self.log, seq_len=self.model_config.seq_len)
        if ctx is not None and ctx.is_main:
            dist.barrier()
        if self.data.vocab_size > self.model_config.vocab_size:
            raise ValueError(f"the tokenizer has {self.data.vocab_size} tokens but the model's vocab_size is "
                             f"{self.model_config.vocab_size}; pass --vocab-size {self.data.vocab_size} or more")
        torch.manual_seed(cfg.seed)  # the same initialization on every rank
        self.model = Transformer(self.model_config).to(self.device)
        # self.module runs the training forward/backward: DDP(model), or the model itself (FSDP2 shards in place)
        self.module = self.model if ctx is None else parallelize(self.model, cfg.parallel, ctx)
        self.optimizer = build_optimizer(cfg.optimizer, self.module, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                         clip_c=cfg.clip_c, extra=cfg.opt)
        if ctx is not None and isinstance(self.optimizer, SpectralOptimizer):
            self.optimizer = DistributedSpectral(self.optimizer, parallel=cfg.parallel)
        self.peak_lrs = [g["lr"] for g in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        if ctx is not None and cfg.diag_every:
            self.log(f"spectral diagnostics are off under --parallel {cfg.parallel} (diag_every {cfg.diag_every} "
                     "ignored); run a single process to record them")
        self.diagnostics = SpectralDiagnostics(self.model, 0 if ctx is not None else cfg.diag_every)
        self.step = 0
        self.tokens = 0
        self.elapsed = 0.0
        self.window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0, "seconds": 0.0}  # the open logging window
        self.saved_step: int | None = None  # the step of the run folder's checkpoint
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        self._stop: int | None = None

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def _restore(self, ckpt: dict[str, Any]) -> None:
        path = ckpt["path"]
        if ckpt["model_config"] != self.model_config.to_dict():
            diff = {k: (v, self.model_config.to_dict().get(k)) for k, v in ckpt["model_config"].items()
                    if self.model_config.to_dict().get(k) != v}
            raise CheckpointError(f"checkpoint {path} was made for another model; (checkpoint, now): {diff}")
        saved_world = int(ckpt.get("world_size", 1))
        saved_micro = saved_world * int(ckpt["config"].get("grad_accum", 1))
        if saved_micro != self.world * self.cfg.grad_accum:
            raise CheckpointError(
                f"checkpoint {path} was trained with {saved_micro} micro-batches per step ({saved_world} rank(s) x "
                f"grad_accum {saved_micro // saved_world}); now {self.world} x {self.cfg.grad_accum}: pass "
                f"--grad-accum {saved_micro / self.world:g} to continue the same trajectory on {self.world} rank(s)")
        if ckpt.get("dcp"):
            checkpoint_folder.load(path, self.module, self.optimizer)
        else:
            try:
                self.model.load_state_dict(ckpt["model"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"checkpoint {path} does not match this model/optimizer: {exc}") from exc
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["initial_lr"] = peak
        self.diagnostics.load_state_dict(ckpt.get("diagnostics", {}))
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"])
        self.step = self.saved_step = int(ckpt["step"])
        self.tokens = int(ckpt.get("tokens", 0))
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        self.window.update(ckpt.get("window", {}))
        if self.step > self.cfg.steps:
            raise CheckpointError(f"checkpoint {path} is at step {self.step}, beyond --steps {self.cfg.steps}")

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / (LAST_DCP if self.dcp else LAST)

    def nonfinite_state(self) -> list[str]:
        """Names of the model and optimizer-state tensors holding NaN or Inf (all ranks agree; collective under
        torchrun). One host sync."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        named = list(self.model.state_dict().items())
        for param, state in self.optimizer.state.items():
            if isinstance(state, dict):
                named += [(f"optimizer state {k!r} of {names.get(id(param), '?')}", v) for k, v in state.items()]
        named = [(n, t.to_local() if hasattr(t, "to_local") else t) for n, t in named
                 if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())]
        if not named:
            return []
        finite = torch.stack([torch.isfinite(t).all().to(self.device) for _, t in named])
        agreed = finite.all().to(torch.int32)
        if self.ctx is not None:
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
        if bool(agreed):
            return []
        return [n for (n, _), ok in zip(named, finite.tolist()) if not ok] or ["(values on another rank)"]

    def save(self) -> Path:
        """Write the checkpoint of the completed steps; raises _Diverged (and writes nothing) when the weights or
        optimizer state are non-finite, so the last good checkpoint is kept."""
        bad = self.nonfinite_state()
        if bad:
            shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
            raise _Diverged(f"step {self.step}: non-finite values in {shown}; not saving them ({_HINT})")
        window = {"loss": float(mean_over_ranks(self._window_loss)), "grad_norm": float(self._window_norm),
                  "steps": self.window["steps"], "seconds": self.window["seconds"]}
        if self.dcp:
            meta = {"step": self.step, "tokens": self.tokens, "elapsed": self.elapsed, "world_size": self.world,
                    "config": self.cfg.to_dict(), "model_config": self.model_config.to_dict(), "window": window}
            path = checkpoint_folder.save(self.checkpoint_path, self.module, self.optimizer, meta, self.is_main)
        else:
            path = save_checkpoint(self.checkpoint_path, {
                "step": self.step, "tokens": self.tokens, "elapsed": self.elapsed,
                "config": json.dumps(self.cfg.to_dict()), "model_config": json.dumps(self.model_config.to_dict()),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "diagnostics": self.diagnostics.state_dict(), "rng": torch.get_rng_state(), "window": window})
        self.saved_step = self.step
        return path

    # ---- pieces of a step --------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None)

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for x, y in batches:
            with self._autocast():
                total += self.model(x.to(self.device), y.to(self.device)).float()
        self.model.train()
        return float(total / len(batches))

    def _pre_clip(self, factor: float) -> None:
        try:
            from spectrakit import clip_grad_spectral_
        except ImportError as exc:
            raise ValueError("--pre-clip needs spectrakit.clip_grad_spectral_, which this installation does not "
                             "provide yet") from exc
        matrices = [p for p in self.model.parameters() if p.ndim == 2 and p.grad is not None]
        clip_grad_spectral_(matrices, self.cfg.pre_clip / min(1.0, factor))

    def _train_step(self, step: int, diag: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        factor = lr_factor(step, total=cfg.steps, warmup=cfg.warmup, schedule=cfg.schedule,
                           min_lr_ratio=cfg.min_lr_ratio, decay_frac=cfg.decay_frac)
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak * factor
        loss_sum = torch.zeros((), device=self.device)
        first_micro = 0 if self.ctx is None else self.ctx.rank * cfg.grad_accum
        for micro in range(cfg.grad_accum):
            x, y = train_batch(self.data.train, cfg.batch_size, self.model_config.seq_len, seed=cfg.seed,
                               step=step, micro=first_micro + micro)
            with self._no_sync(micro):
                with self._autocast(), self.diagnostics.watch_activations(diag and micro == 0):
                    loss = self.module(x.to(self.device), y.to(self.device)) / cfg.grad_accum
                loss.backward()
            loss_sum += loss.detach().float()
        if diag:
            self.diagnostics.before_step(step + 1)
        if cfg.pre_clip is not None:
            self._pre_clip(factor)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
            grad_norm = grad_norm.full_tensor()
        # divergence check before the update, one host sync per step (the gradient norm is the same on every rank)
        finite = torch.isfinite(grad_norm) if self.ctx is not None else torch.isfinite(grad_norm + loss_sum)
        if not bool(finite):
            self.optimizer.zero_grad(set_to_none=True)
            loss_value, norm_value = float(loss_sum), float(grad_norm)
            raise _Diverged(f"step {step + 1}: the training loss is {loss_value:.4g} (gradient norm "
                            f"{norm_value:.4g}); stopping ({_HINT})",
                            {"step": step + 1, "train_loss": loss_value, "grad_norm": norm_value})
        # spectrakit optimizers record statistics() (e.g. the clip threshold c_t) only when asked: at diag steps
        tracking = getattr(self.optimizer, "track_stats", None)
        if diag and tracking is not None:
            self.optimizer.track_stats = True
        try:
            self.optimizer.step()
        except NonFiniteGradientError as exc:  # an optimizer's own check (no parameter was changed)
            raise _Diverged(f"step {step + 1}: the optimizer met non-finite values ({str(exc)[:200]}); stopping "
                            f"({_HINT})") from exc
        if diag and tracking is not None:
            self.optimizer.track_stats = tracking
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, grad_norm

    def _no_sync(self, micro: int):
        """DDP: skip the gradient all-reduce on all but the last micro-batch of a step."""
        if isinstance(self.module, torch.nn.parallel.DistributedDataParallel) and micro < self.cfg.grad_accum - 1:
            return self.module.no_sync()
        return contextlib.nullcontext()

    # ---- the run -----------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self._stop = signum
        self.log(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint after this step, then exiting")

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lrs = sorted({g["lr"] for g in self.optimizer.param_groups})
        resolved = {"config": self.cfg.to_dict(), "model": self.model_config.to_dict(),
                    "parameters": self.model.num_parameters(), "device": str(self.device),
                    "autocast": str(self.amp) if self.amp else "float32", "data": self.data.name,
                    "train_tokens": len(self.data.train), "val_tokens": len(self.data.val),
                    "tokens_per_step": self.tokens_per_step, "world_size": self.world, "peak_lrs": lrs,
                    "optimizer_class": type(self.optimizer).__name__, "torch": torch.__version__}
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        if self.data.tokenizer_path is not None and self.data.tokenizer_path.is_file():
            shutil.copyfile(self.data.tokenizer_path, self.run_dir / "tokenizer.json")
        routing = getattr(self.optimizer, "routing_report", None)
        if callable(routing):
            (self.run_dir / "routing.txt").write_text(str(routing()) + "\n")

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step over all ranks."""
        return self.cfg.batch_size * self.cfg.grad_accum * self.world * self.model_config.seq_len

    def run(self) -> RunResult:
        """Train to cfg.steps (see the module docstring for how a run ends)."""
        if self.checkpoint is not None and self.step >= self.cfg.steps:
            self.log(f"nothing to do: finished at step {self.step} (pass a larger --steps to continue)")
            return RunResult(self.run_dir, self.step, None, 0.0)
        lock = RunLock(self.run_dir, self.log).acquire() if self.is_main else None
        try:
            self._check_folder()
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _refuse_a_used_folder(self) -> None:
        if any((self.run_dir / "checkpoints" / name).exists() for name in (LAST, LAST_DCP)):
            raise ValueError(f"run folder {self.run_dir} already holds a checkpoint; continue it with "
                             f"--resume {self.run_dir} or pick another --run-name")

    def _check_folder(self) -> None:
        """Under the run folder's lock: nothing changed since __init__ looked (another run may have ended since)."""
        if self.checkpoint is None:
            self._refuse_a_used_folder()
        elif self.is_main and _stamp(self.checkpoint["path"]) != self._stamp:
            raise CheckpointError(f"checkpoint {self.checkpoint['path']} changed after it was loaded (another run "
                                  "wrote it); start the resume again")
        if self.is_main:
            remove_stale_temporaries(self.run_dir / "checkpoints", self.log)
            if self.dcp:
                checkpoint_folder.remove_stale_temporary(self.checkpoint_path, self.log)

    def _run(self) -> RunResult:
        cfg = self.cfg
        resumed = self.checkpoint is not None
        status, message, final_val = "error", None, None
        metrics: MetricsWriter | _NoMetrics = _NoMetrics()
        self._run_tokens, self._run_start = 0, time.perf_counter()
        try:
            if self.is_main:
                self._write_run_files()
                metrics = MetricsWriter(self.run_dir, resume_step=self.step if resumed else None, log=self.log)
            self.log(f"run folder {self.run_dir}: {self.model.num_parameters() / 1e6:.2f}M parameters, "
                     f"{cfg.optimizer} (peak lr {self.peak_lrs[0]:g}), {self.tokens_per_step} tokens/step, "
                     f"{len(self.data.train) / 1e6:.2f}M train tokens, device {self.device}"
                     + (f", autocast {self.amp}" if self.amp else "")
                     + (f", {cfg.parallel} over {self.world} ranks" if self.ctx is not None else "")
                     + (f"; resuming at step {self.step}" if resumed else ""))
            final_val = self._loop(metrics)
            status = "finished" if self._stop is None else "interrupted"
        except _Diverged as exc:
            status, message = "diverged", str(exc.args[0])
            kept = (f"the last good checkpoint is step {self.saved_step}: {self.checkpoint_path}"
                    if self.saved_step is not None else "no checkpoint was written")
            self.log(f"{message}; {kept}")
            if len(exc.args) > 1:  # the record of the step that diverged
                record = exc.args[1]
                metrics.log({"step": record["step"], "kind": "train", "tokens": self.tokens + self.tokens_per_step,
                             "lr": self.optimizer.param_groups[0]["lr"], **record})
            final_val = math.nan
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted twice: stopped at once, without a checkpoint"
            self._stop = self._stop or int(signal.SIGINT)
            raise
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            metrics.close()
            tokens_per_s = self._run_tokens / max(time.perf_counter() - self._run_start, 1e-9)
            if self.is_main:
                self._write_summary(status, message, final_val, tokens_per_s)
        return RunResult(self.run_dir, self.step, final_val, tokens_per_s, self._stop, status == "diverged")

    def _write_summary(self, status: str, message: str | None, final_val: float | None, tokens_per_s: float) -> None:
        """summary.json (strict JSON) and the plots; failures here are reported, never raised over the run's end."""
        summary = {"status": status, "steps_done": self.step, "final_val_loss": final_val,
                   "tokens_per_s": tokens_per_s, "elapsed_s": self.elapsed, "tokens": self.tokens,
                   "interrupted_by": self._stop, "diverged": status == "diverged", "checkpoint_step": self.saved_step,
                   "message": message}
        try:
            (self.run_dir / "summary.json").write_text(json.dumps(_strict(summary), indent=2, allow_nan=False) + "\n")
            if self.cfg.plots:
                from .plots import plot_run

                plot_run(self.run_dir)
        except Exception as exc:  # e.g. the disk is full: the run's own outcome is what matters
            self.log(f"could not write summary.json or the plots in {self.run_dir}: {type(exc).__name__}: {exc}")

    def _loop(self, metrics) -> float | None:
        cfg = self.cfg
        val = val_batches(self.data.val, cfg.batch_size, self.model_config.seq_len, cfg.eval_batches)
        final_val: float | None = None
        if self.checkpoint is None:
            final_val = self.evaluate(val)
            metrics.log({"step": 0, "kind": "val", "tokens": 0, "val_loss": final_val,
                         "val_ppl": math.exp(min(final_val, 50))})
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        bar = self.progress if self.progress is not None else _progress(cfg, self.step) if self.is_main else None
        # the logging window (losses and gradient norms summed since the last train record), part of checkpoints
        self._window_loss = torch.tensor(float(self.window["loss"]), device=self.device)
        self._window_norm = torch.tensor(float(self.window["grad_norm"]), device=self.device)
        mark = time.perf_counter()
        try:
            while self.step < cfg.steps:
                diag = self.diagnostics.active(self.step, cfg.steps)
                loss, grad_norm = self._train_step(self.step, diag)
                if self.ctx is not None:
                    self._stop = agreed_signal(self._stop, self.device)  # every rank stops after the same step
                self.step += 1
                self.tokens += self.tokens_per_step
                self._run_tokens += self.tokens_per_step
                self._window_loss += loss
                self._window_norm += grad_norm.float()
                now = time.perf_counter()
                self.elapsed += now - mark
                self.window["steps"] += 1
                self.window["seconds"] += now - mark
                mark = now
                if diag:
                    record = self.diagnostics.after_step(self.optimizer)
                    metrics.log_diagnostics(record)
                    metrics.log({"step": self.step, "kind": "diag", **summarize(record)})
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    self._log_window(metrics, bar)
                if bar is not None:
                    bar.update(1)
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    final_val = self.evaluate(val)
                    metrics.log({"step": self.step, "kind": "val", "tokens": self.tokens, "val_loss": final_val,
                                 "val_ppl": math.exp(min(final_val, 50))})
                    self._print(bar, f"step {self.step:>6}/{cfg.steps}  val loss {final_val:.4f}  "
                                     f"ppl {math.exp(min(final_val, 50)):.1f}")
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or last or self._stop is not None:
                    self.save()
                if self._stop is not None:
                    self._print(bar, f"checkpoint saved at step {self.step}: {self.checkpoint_path}")
                    break
        finally:
            if bar is not None and bar is not self.progress:
                bar.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        return final_val

    def _log_window(self, metrics, bar) -> None:
        """One train record: the mean loss and gradient norm over the steps since the previous one."""
        steps, seconds = self.window["steps"], self.window["seconds"]
        train_loss = float(mean_over_ranks(self._window_loss) / steps)
        tps = steps * self.tokens_per_step / max(seconds, 1e-9)
        metrics.log({"step": self.step, "kind": "train", "tokens": self.tokens,
                     "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                     "grad_norm": float(self._window_norm / steps), "tokens_per_s": tps, "elapsed_s": self.elapsed})
        if bar is None:
            self.log(f"step {self.step:>6}/{self.cfg.steps}  loss {train_loss:.4f}  {tps:,.0f} tok/s")
        else:
            bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps:,.0f}", refresh=False)
        self._window_loss.zero_(), self._window_norm.zero_()
        self.window.update(steps=0, seconds=0.0)

    def _print(self, bar, text: str) -> None:
        if bar is not None:
            bar.write(text)
        else:
            self.log(text)


def _stamp(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a checkpoint file, or of a distributed checkpoint's trainer.json."""
    stat = (path / checkpoint_folder.META if path.is_dir() else path).stat()
    return stat.st_mtime_ns, stat.st_size


def _quiet(_text: str) -> None:
    """The log of ranks other than 0."""


class _NoMetrics:
    """The metric sink of ranks other than 0: records are dropped (rank 0 writes them)."""

    def log(self, record: dict[str, Any]) -> None:
        pass

    def log_diagnostics(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True)
