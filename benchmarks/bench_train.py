"""Training throughput of `spectrakit train` per optimizer, relative to AdamW (issue 16 targets; BENCHMARKS.md
"train").

Each optimizer trains the tiny preset on the embedded corpus for ``--steps`` steps (no evaluation before the
end, no checkpoints, no plots), in rounds: one short run of every optimizer per round, so that drift of the
machine's speed hits all alike. The figure is the median over rounds of the tokens/s the harness logs over a
run's steps after the first logging interval (which holds the warm-up).

    python benchmarks/bench_train.py                       # adamw, spectra-adamw, sso, sso with Illinois
    python benchmarks/bench_train.py --quick               # 4 steps of two optimizers, prints only (tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import positive_int, write_section  # noqa: E402

from spectrakit.train.trainer import autocast_dtype  # noqa: E402

#: label -> extra `spectrakit train` arguments
CONTENDERS: dict[str, list[str]] = {
    "adamw": ["--optimizer", "adamw"],
    "spectra-adamw": ["--optimizer", "spectra-adamw"],
    "sso (bisection, the paper's solver; default)": ["--optimizer", "sso"],
    "sso --opt solver=illinois": ["--optimizer", "sso", "--opt", "solver=illinois"],
}
BASELINE = "adamw"


#: --quick: a model and corpus slice small enough for a test (the tokenizer is trained on the slice, cached in the run's
#: temporary folder)
QUICK_SETTINGS = ["--vocab-size", "320", "--corpus-fraction", "0.01", "--d-model", "32", "--n-layers", "1",
                  "--n-heads", "2", "--seq-len", "16", "--batch-size", "2"]


def tokens_per_second(extra: list[str], steps: int, log_every: int, threads: int | None, out: Path) -> float:
    """The mean of the logged tokens/s after the first logging interval of one `spectrakit train` run."""
    command = [sys.executable, "-m", "spectrakit", "train", *extra, "--steps", str(steps), "--log-every",
               str(log_every), "--eval-every", str(10 * steps), "--eval-batches", "1", "--ckpt-every", "0",
               "--no-progress", "--no-plots", "--out-dir", str(out)]
    if threads is not None:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    (metrics,) = out.glob("*/metrics.jsonl")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if r["kind"] == "train"][1:]
    if not rates:
        raise RuntimeError(f"no timed interval in {metrics}: use more --steps than --log-every")
    return statistics.fmean(rates)


def measure(labels: list[str], steps: int, log_every: int, rounds: int, threads: int | None,
            common: list[str] | None = None) -> dict[str, list[float]]:
    """tokens/s of every run, by label (``common``: extra arguments of every run)."""
    rates: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        shared = [*common, "--cache-dir", str(Path(tmp) / "cache")] if common else []
        for r in range(rounds):
            for i, label in enumerate(labels):
                out = Path(tmp) / f"r{r}-{i}"
                rates[label].append(tokens_per_second([*CONTENDERS[label], *shared], steps, log_every, threads, out))
    return rates


def table(rates: dict[str, list[float]]) -> str:
    base = statistics.median(rates[BASELINE])
    rows = ["| optimizer | tokens/s (median) | vs AdamW | rounds |", "|---|---|---|---|"]
    for label, values in rates.items():
        t = statistics.median(values)
        rows.append(f"| {label} | {t:,.0f} | {t / base:.2f}x | {', '.join(f'{v:,.0f}' for v in values)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 steps of adamw and spectra-adamw; print only")
    parser.add_argument("--steps", type=positive_int, default=40)
    parser.add_argument("--log-every", type=positive_int, default=10)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads of each run (default: the CLI's)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="autocast dtype of every run (default: the CLI's auto)")
    args = parser.parse_args(argv)
    if args.steps <= args.log_every:
        parser.error(f"--steps ({args.steps}) must exceed --log-every ({args.log_every}): the first logging "
                     "interval holds the warm-up and is not timed")
    if args.quick:
        body = table(measure([BASELINE, "spectra-adamw"], 4, 2, 1, 1, QUICK_SETTINGS))
        print(body)
        return body
    rates = measure(list(CONTENDERS), args.steps, args.log_every, args.rounds, args.threads, ["--dtype", args.dtype])
    threads = "the CLI's default threads" if args.threads is None else f"{args.threads} thread(s)"
    autocast = autocast_dtype(torch.device("cpu"), args.dtype)
    body = (table(rates) + f"\n\n`spectrakit train` tiny preset (d 128, 4 layers, vocab 8192, batch 16 x 128), "
            f"{args.steps} steps per run, {args.rounds} interleaved rounds, {threads}, --dtype {args.dtype} "
            f"(autocast {'bfloat16' if autocast else 'off, float32'} on this CPU); tokens/s as logged by the "
            f"harness after the first {args.log_every} steps.")
    command = ("python benchmarks/bench_train.py" + (f" --threads {args.threads}" if args.threads else "")
               + (f" --dtype {args.dtype}" if args.dtype != "auto" else ""))
    write_section("train", "## Training throughput (spectrakit train, tiny preset)\n\n" + body, command)
    print(body)
    return body


if __name__ == "__main__":
    main()
