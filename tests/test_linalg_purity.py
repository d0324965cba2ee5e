"""spectrakit.linalg is a leaf: importing it, calling it, even handing it a DTensor, loads nothing from
spectrakit.optim, spectrakit.distributed or spectrakit.train. DTensors are evaluated by the handler that
``import spectrakit.distributed`` registers; without it they raise a TypeError that says so.

Each check runs in a fresh interpreter (``sys.executable -c``), where sys.modules shows what an import loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

OTHER_LAYERS = ("spectrakit.optim", "spectrakit.distributed", "spectrakit.train")

_LOADED = """
import json, sys
print(json.dumps(sorted(m for m in sys.modules if m.startswith("spectrakit"))))
"""


def _fresh(code: str) -> list[str]:
    """Run ``code`` in a new interpreter; the spectrakit modules loaded when it ends (it must not fail)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + _LOADED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _other_layers(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(OTHER_LAYERS)]


def test_importing_linalg_and_every_module_in_it_loads_no_other_layer():
    loaded = _fresh("""
        import importlib, pkgutil
        import spectrakit.linalg
        for info in pkgutil.walk_packages(spectrakit.linalg.__path__, "spectrakit.linalg."):
            importlib.import_module(info.name)
    """)
    assert "spectrakit.linalg.power" in loaded and "spectrakit.linalg.multiplier" in loaded
    assert _other_layers(loaded) == []


def test_plain_calls_load_no_other_layer():
    loaded = _fresh("""
        import torch
        from spectrakit import linalg
        X = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
        for method in ("polar", "svd"):
            linalg.soft_clip(X, 1.0, method=method)
            linalg.hard_clip(X, 1.0, method=method)
        linalg.soft_clip(X, 1.0, method="newton_schulz")
        linalg.soft_clip(X[0, 0], 1.0)
        linalg.msign(X)
        linalg.soft_clip_svd(X, 1.0), linalg.hard_clip_svd(X, 1.0), linalg.msign_svd(X)
        linalg.spectral_norm(X)
        U, S, V = linalg.top_singular(X, 2)
        linalg.block_power_iteration(X, V, 2)
        Theta = U[..., :1] @ V[..., :1].mT
        linalg.solve_multiplier(X / torch.linalg.matrix_norm(X, keepdim=True), Theta)
    """)
    assert _other_layers(loaded) == []


_DTENSOR = """
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from spectrakit import linalg

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
full = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
X = distribute_tensor(full, init_device_mesh("cpu", (1,)), [Shard(0)])
calls = {"soft_clip": lambda A: linalg.soft_clip(A, 0.5), "hard_clip": lambda A: linalg.hard_clip(A, 0.5),
         "msign": linalg.msign, "msign_svd": linalg.msign_svd}
errors = {}
for name, fn in calls.items():
    try:
        fn(X)
        errors[name] = None
    except TypeError as error:
        errors[name] = str(error)
before = sorted(m for m in sys.modules if m.startswith("spectrakit"))
import spectrakit.distributed
differences = {}
for name, fn in calls.items():
    Y = fn(X)
    differences[name] = [type(Y).__name__, float((Y.full_tensor() - fn(full)).abs().max())]
dist.destroy_process_group()
print(json.dumps({"errors": errors, "before": before, "differences": differences}))
"""


@pytest.fixture(scope="module")
def dtensor_run() -> dict:
    done = subprocess.run([sys.executable, "-c", _DTENSOR], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_dtensor_without_the_distributed_layer_raises_a_clear_type_error(dtensor_run):
    for name, message in dtensor_run["errors"].items():
        assert message is not None, f"{name} evaluated a DTensor without spectrakit.distributed"
        assert "X is a DTensor" in message and "run `import spectrakit.distributed`" in message, name
    assert _other_layers(dtensor_run["before"]) == []


def test_importing_the_distributed_layer_registers_the_sharded_evaluator(dtensor_run):
    for name, (kind, difference) in dtensor_run["differences"].items():
        assert kind == "DTensor", name
        assert difference < 1e-10, name  # float64: the QR route equals the plain call to rounding
