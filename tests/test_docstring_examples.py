"""The examples in the docstrings of the public API run.

Collected from every public module of spectrakit (the package, optim, linalg, preclip, integrations,
distributed): ``>>>`` doctests, ```python fenced blocks and reST literal blocks introduced by a paragraph that
starts with "Example" and ends with "::". Each runs in a namespace holding spectrakit's public names, torch and
a tiny ``model``; ``SETUP`` gives the examples that name other objects (a Trainer, a multi-head model) what
they need and checks their result. A new example is enrolled automatically; one that cannot run here goes in
``SKIP`` with the reason.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import spectrakit

ROOTS = ("spectrakit", "spectrakit.optim", "spectrakit.linalg", "spectrakit.preclip", "spectrakit.integrations",
         "spectrakit.distributed")
SRC = Path(spectrakit.__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _public_modules() -> list:
    names = set()
    for root in ROOTS:
        module = importlib.import_module(root)
        names.add(root)
        if hasattr(module, "__path__"):
            names.update(info.name for info in pkgutil.iter_modules(module.__path__, root + ".")
                         if not info.name.rsplit(".", 1)[1].startswith("_"))
    return [importlib.import_module(name) for name in sorted(names)]


def _documented(module) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the module and of the classes, functions and methods it defines."""
    out = [("", module.__doc__ or "")]
    for name, obj in vars(module).items():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module.__name__:
            continue
        out.append((name, obj.__doc__ or ""))
        if inspect.isclass(obj):
            out += [(f"{name}.{attr}", member.__doc__ or "") for attr, member in vars(obj).items()
                    if (inspect.isfunction(member) or isinstance(member, property)) and member.__doc__]
    return out


def _examples(doc: str) -> list[str]:
    doc = inspect.cleandoc(doc)
    found = [block for block in re.findall(r"^```python\n(.*?)^```", doc, flags=re.S | re.M)]
    for match in re.finditer(r"^(?:Example|For example)[^\n]*::\n\n((?:[ \t]+[^\n]*\n|\n)+)", doc + "\n", re.M):
        found.append(textwrap.dedent(match.group(1)).strip() + "\n")
    if ">>>" in doc:
        found.append(doc)  # run as a doctest
    return found


def _collect() -> dict[str, str]:
    examples = {}
    for module in _public_modules():
        for qualname, doc in _documented(module):
            for i, code in enumerate(_examples(doc)):
                examples[f"{module.__name__}:{qualname or '<module>'}#{i}"] = code
    return examples


EXAMPLES = _collect()


def _namespace() -> dict:
    torch.manual_seed(0)
    names = {name: getattr(spectrakit, name) for name in spectrakit.__all__}
    return {**names, "torch": torch, "nn": nn, "model": nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))}


# ------------------------------------------------------------------------------- examples that need a setting
def _hf_trainer(tmp_path: Path) -> tuple[dict, Callable[[dict], None]]:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from spectrakit.integrations import trainer_optimizer

    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8)
    tokens = torch.arange(8) % 32
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2,
                                          use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    namespace = {"Trainer": transformers.Trainer, "trainer_optimizer": trainer_optimizer, "args": args,
                 "model": transformers.LlamaForCausalLM(config),
                 "data": [{"input_ids": tokens, "labels": tokens}] * 4}

    def check(ns: dict) -> None:
        ns["trainer"].train()  # builds the optimizer from the example's arguments, then steps once
        optimizer = ns["trainer"].optimizer
        while not isinstance(optimizer, spectrakit.Spectra):
            optimizer = optimizer.optimizer
        assert optimizer.param_groups[0]["clip_c"] == 10.0

    return namespace, check


def _sso_heads(tmp_path: Path) -> tuple[dict, Callable[[dict], None]]:
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(16, 16, bias=False) for _ in range(4))

        def forward(self, x):
            return self.o_proj(self.q_proj(x) * self.k_proj(x) + self.v_proj(x))

    def check(ns: dict) -> None:
        ns["model"](torch.randn(4, 16)).square().mean().backward()
        ns["opt"].step()

    return {"model": Attention(), "n_heads": 4}, check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed(tmp_path: Path) -> None:
    """One rank launched as torchrun would (its environment variables), in a subprocess."""
    code = EXAMPLES["spectrakit.distributed.optimizer:DistributedSpectral#0"]
    script = textwrap.dedent("""
        import torch
        from torch import nn
        from spectrakit import Spectra
        from spectrakit.distributed import DistributedSpectral, init_from_env, parallelize, save_checkpoint, shutdown

        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))

        torch.manual_seed(0)
        model = Model()
        """) + code
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "ckpt" / "step1000").is_dir()


SETUP: dict[str, Callable[[Path], tuple[dict, Callable[[dict], None]]]] = {
    "spectrakit.integrations.hf:trainer_optimizer#0": _hf_trainer,
    "spectrakit.optim.sso:SSO#0": _sso_heads,
}
SUBPROCESS: dict[str, Callable[[Path], None]] = {
    "spectrakit.distributed.optimizer:DistributedSpectral#0": _distributed,
}
SKIP: dict[str, str] = {}  # example id -> why it cannot run in the test suite (GPU, network)


def test_examples_are_found_and_every_special_case_names_one():
    assert len(EXAMPLES) >= 3, sorted(EXAMPLES)
    stale = [key for key in (*SETUP, *SUBPROCESS, *SKIP) if key not in EXAMPLES]
    assert not stale, f"entries for examples that no longer exist: {stale}"


@pytest.mark.parametrize("key", sorted(EXAMPLES))
def test_docstring_example_runs(key, tmp_path, monkeypatch):
    if key in SKIP:
        pytest.skip(SKIP[key])
    if key in SUBPROCESS:
        SUBPROCESS[key](tmp_path)
        return
    monkeypatch.chdir(tmp_path)
    namespace, check = _namespace(), None
    if key in SETUP:
        extra, check = SETUP[key](tmp_path)
        namespace.update(extra)
    _run(EXAMPLES[key], namespace, key)
    if check is not None:
        check(namespace)


def _run(code: str, namespace: dict, key: str) -> None:
    if ">>>" in code:
        test = doctest.DocTestParser().get_doctest(code, namespace, key, None, 0)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=lambda text: None)
        assert runner.summarize(verbose=False).failed == 0, f"doctest {key} failed"
    else:
        exec(compile(code, key, "exec"), namespace)  # noqa: S102 - the documentation's own example


def test_the_collector_finds_each_kind_of_example_and_runs_doctests():
    doc = """Summary.

    Example::

        x = 1

    More text::

        not collected (no "Example" paragraph)

    ```python
    y = 2
    ```

    >>> 1 + 1
    2
    """
    found = _examples(doc)
    assert [c for c in found if ">>>" not in c] == ["y = 2\n", "x = 1\n"] and len(found) == 3
    _run(found[2], {}, "ok")
    with pytest.raises(AssertionError, match="doctest bad failed"):
        _run(">>> 1 + 1\n3\n", {}, "bad")
