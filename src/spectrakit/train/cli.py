"""``spectrakit train | compare | sample``.

Settings resolve as: the preset's model shape and TrainConfig defaults < ``--config FILE`` (JSON or TOML) < flags.
With ``--resume`` the checkpoint's settings are the base, and only settings that do not change the trajectory (or
``--steps``) may differ. Settings are parsed and checked before torch is imported: help, argument errors and
config errors are immediate.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .config import TrainConfig, field_help, field_types, load_config_file, parse_opt_items
from .corpus import DataError

# Settings a resumed run may change without leaving the checkpoint's trajectory (steps extends or shortens it;
# parallel and grad_accum may change together with the number of ranks when ranks x grad_accum stays the same,
# which the Trainer checks).
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "eval_every", "eval_batches", "diag_every", "ckpt_every",
                               "progress", "plots", "device", "threads", "cache_dir", "parallel", "grad_accum"})
_COMPARE_DEFAULTS = {"steps": 200, "plots": False, "eval_every": 50, "diag_every": 50}
_FIELD_NAMES = [f.name for f in fields(TrainConfig)]


def _add_config_arguments(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of settings (flags override it)")
    helps, types = field_help(), field_types()
    group = p.add_argument_group("settings (also valid as config-file keys)")
    for name in _FIELD_NAMES:
        if name in skip:
            continue
        flag, kind, help_text = "--" + name.replace("_", "-"), types[name], helps[name]
        if name == "opt":
            group.add_argument(flag, action="append", metavar="KEY=VALUE", help=help_text)
        elif kind.startswith("bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            conv = int if kind.startswith("int") else float if kind.startswith("float") else str
            default = getattr(TrainConfig(), name)
            suffix = f" (default {default})" if default not in (None, {}) and "default" not in help_text else ""
            group.add_argument(flag, type=conv, metavar=conv.__name__.upper(), help=help_text + suffix)


def _given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings from --config and flags (flags win); only those the user gave."""
    given: dict[str, Any] = {}
    if args.config:
        given.update({k.replace("-", "_"): v for k, v in load_config_file(args.config).items()})
    for name in _FIELD_NAMES:
        value = getattr(args, name, None)
        if value is not None:
            given[name] = value
    if isinstance(given.get("opt"), list):
        from_file = load_config_file(args.config).get("opt", {}) if args.config else {}
        given["opt"] = {**from_file, **parse_opt_items(given["opt"])}
    return given


def config_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> TrainConfig:
    return TrainConfig.from_dict({**(defaults or {}), **_given_settings(args)}).validate()


def _resume_config(args: argparse.Namespace) -> TrainConfig:
    from .checkpoint_file import load_checkpoint

    saved = TrainConfig.from_dict(load_checkpoint(args.resume)["config"], source=f"checkpoint {args.resume}")
    given = _given_settings(args)
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE_CHANGES and getattr(saved, k, None) != v)
    if changed:
        raise ValueError(f"--resume continues the checkpoint's run, but these settings differ from it: {changed}; "
                         f"only {sorted(RESUMABLE_CHANGES)} may change")
    return replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_CHANGES}).validate()


def _exit_code(exc: Exception) -> int | None:
    """2 for bad settings (ValueError), 1 for data, checkpoint and file errors: their message is printed without a
    traceback. None for anything else (a bug, whose traceback is shown)."""
    if isinstance(exc, ValueError):
        return 2
    if isinstance(exc, (DataError, OSError)):
        return 1
    checkpoint = sys.modules.get(f"{__package__}.checkpoint_file")  # no CheckpointError before that module loaded
    return 1 if checkpoint is not None and isinstance(exc, checkpoint.CheckpointError) else None


def _fail(command: str, exc: Exception) -> int:
    """Print a user error and return its exit code; re-raise anything else."""
    code = _exit_code(exc)
    if code is None:
        raise exc
    print(f"spectrakit {command}: error: {exc}", file=sys.stderr)
    return code


def _end(ctx: Any, code: int, *, failed: bool = False) -> int:
    """The exit code of a single process; under torchrun, ``parallel.finish`` ends the process group."""
    if ctx is None:
        return code
    from .parallel import finish

    return finish(ctx, code, failed=failed)


def _fail_under_torchrun(ctx: Any) -> None:
    """An unexpected exception under torchrun: print its traceback and exit at once (``parallel``)."""
    if ctx is not None:
        from .parallel import fail_on_exception

        fail_on_exception(ctx)


# ---- train ----------------------------------------------------------------------------------------------------------
def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pre-train a LLaMA-style model (default: tiny model, embedded corpus, ~5 min)",
                       description="Pre-train a LLaMA-style language model with any spectrakit optimizer. With no "
                                   "arguments: the tiny preset on the embedded Shakespeare + King James Bible corpus "
                                   "with SPECTRA-AdamW, about 5 minutes on 2 CPU cores. On several devices: "
                                   "torchrun --nproc_per_node=N -m spectrakit train --parallel ddp|fsdp ... "
                                   "(--batch-size and --grad-accum are per rank).")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint file or a run folder")
    p.add_argument("--list-optimizers", action="store_true", help="list optimizer names and exit")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings (defaults filled in) as JSON and exit")
    _add_config_arguments(p)
    p.set_defaults(func=run_train)


def _import_under_held_interrupts() -> None:
    """Import torch and the training modules with SIGINT held, then let it through.

    A KeyboardInterrupt raised inside numpy's or torch's module initialisation can leave them half-imported, and
    the next import then fails with another error (seen: a RecursionError in numpy.linalg). That error is not a
    clean exit 130. Held, the signal arrives right after the imports, where it is a plain KeyboardInterrupt.
    """
    import signal

    held = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if held else None
    try:
        import torch  # noqa: F401

        from . import parallel, trainer  # noqa: F401
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_train(args: argparse.Namespace) -> int:
    if args.list_optimizers:
        from ..registry import available, registration
        from .optimizers import available_optimizers

        ready = set(available_optimizers())
        for name in available():
            entry = registration(name)
            extra = f" {dict(entry.fixed)}" if entry.fixed else ""
            print(f"{name:<18} {entry.class_name}{extra}  {entry.summary}"
                  f"{'' if name in ready else '  (not available in this installation)'}")
        return 0
    ctx = None
    try:
        if args.resume:  # reading the checkpoint needs torch
            _import_under_held_interrupts()
        cfg = _resume_config(args) if args.resume else config_from_args(args)  # settings checked without torch
        if args.print_config:
            print(json.dumps(cfg.resolved().to_dict(), indent=2))
            return 0
        if not args.resume:  # (the resumed run imported them above)
            _import_under_held_interrupts()
        from .parallel import start
        from .trainer import Trainer

        ctx = start(cfg)
        result = Trainer(cfg, resume=args.resume, ctx=ctx).run()
    except KeyboardInterrupt:
        print("spectrakit train: interrupted", file=sys.stderr)
        return _end(ctx, 130, failed=True)
    except Exception as exc:
        if _exit_code(exc) is None:
            _fail_under_torchrun(ctx)
            raise
        return _end(ctx, _fail("train", exc), failed=True)
    except BaseException:
        _fail_under_torchrun(ctx)
        raise
    if ctx is None or ctx.is_main:
        launcher = "spectrakit train" if ctx is None else f"torchrun ... -m spectrakit train --parallel {cfg.parallel}"
        if result.signal is not None:
            print(f"stopped at step {result.steps_done}; continue with: {launcher} --resume {result.run_dir}")
        elif result.final_val_loss is not None and not result.diverged:
            print(f"done: {result.steps_done} steps, final validation loss {result.final_val_loss:.4f}; "
                  f"outputs in {result.run_dir}")
    return _end(ctx, result.exit_code)


# ---- compare --------------------------------------------------------------------------------------------------------
def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}") from exc
    return parse


def _lr_item(text: str) -> float | None:
    return None if text.strip() == "default" else float(text)


def _register_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="optimizers x learning rates x seeds on one budget -> Markdown report + plots",
                       description="Train every combination of --optimizers, --lrs and --seeds with the same "
                                   "settings and write a report folder (summary.md, results.json, PNG plots).")
    p.add_argument("--optimizers", type=_csv(str), default=["adamw", "spectra-adamw"],
                   help="comma-separated optimizer names (default adamw,spectra-adamw)")
    p.add_argument("--lrs", type=_csv(_lr_item), default=[None],
                   help="comma-separated peak learning rates; 'default' = each optimizer's own (default)")
    p.add_argument("--seeds", type=_csv(int), default=[0], help="comma-separated seeds (default 0)")
    p.add_argument("--report-dir", default=None, help="report folder (default reports/compare-TIME)")
    _add_config_arguments(p, skip=("optimizer", "lr", "seed", "run_name", "out_dir", "parallel"))
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    import time

    try:
        if not args.optimizers or not args.lrs or not args.seeds:
            raise ValueError("--optimizers, --lrs and --seeds each need at least one value")
        if any(lr is not None and not lr > 0 for lr in args.lrs):
            raise ValueError(f"--lrs must be positive numbers or 'default', got {args.lrs}")
        if any(s < 0 for s in args.seeds):
            raise ValueError(f"--seeds must be integers >= 0, got {args.seeds}")
        base = config_from_args(args, _COMPARE_DEFAULTS)
        if args.log_every is None:  # the report's loss curves: about 200 training-loss points per run
            base = replace(base, log_every=max(1, base.steps // 200))
        report = Path(args.report_dir or f"reports/compare-{time.strftime('%Y%m%d-%H%M%S')}")
        from .compare import run_grid, write_report

        records = run_grid(base, args.optimizers, args.lrs, args.seeds, report)
        summary = write_report(records, base, report)
    except KeyboardInterrupt:
        print("spectrakit compare: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _fail("compare", exc)
    print(summary.read_text())
    print(f"report: {summary}")
    return 0


# ---- sample ---------------------------------------------------------------------------------------------------------
def _register_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint", help="a run folder or a checkpoint file")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature, 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (default 50)")
    p.add_argument("--num-samples", type=int, default=1, help="independent continuations (default 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the run folder's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    try:
        from .sample import generate_text

        texts = generate_text(args.checkpoint, args.prompt, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, num_samples=args.num_samples,
                              seed=args.seed, tokenizer=args.tokenizer, device=args.device)
    except Exception as exc:
        return _fail("sample", exc)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"----- sample {i + 1} -----")
        print(text)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_compare(sub)
    _register_sample(sub)
