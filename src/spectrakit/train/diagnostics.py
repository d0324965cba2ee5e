"""Spectral diagnostics of a training run, recorded every ``every`` steps (nothing runs in between).

Per weight matrix W (every 2-D parameter) at a diagnostics step:
- raw gradient G (after accumulation, before any clipping): its singular values (``torch.linalg.svdvals`` when
  min(m, n) <= ``exact_limit``, else the top-16 by block power iteration and the tail estimated from ||G||_F) and the
  spike ratio sigma_1 / median(sigma);
- weight W: ||W||_2 (warm-started power iteration) and ||W||_F;
- update Delta = W_after - W_before: ||Delta||_2 and ||Delta||_F;
- the optimizer's ``statistics()`` (e.g. the effective clip threshold), when it has that method.
Activation RMS and absolute maximum at the output of each block (forward hooks on the first micro-batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from spectrakit.linalg import spectral_norm, top_singular

_SPECTRUM_KEEP = 64  # singular values kept per gradient for the spectrum plots


def _grad_spectrum(G: Tensor, exact_limit: int) -> tuple[Tensor, Tensor]:
    """(top singular values, descending, at most _SPECTRUM_KEEP; median singular value or its estimate)."""
    m, n = G.shape
    q = min(m, n)
    if q <= exact_limit:
        s = torch.linalg.svdvals(G.float())
        return s[:_SPECTRUM_KEEP], s.median()
    k = 16
    _, s, _ = top_singular(G, k, iters=3)
    tail_energy = (G.float().pow(2).sum() - s.pow(2).sum()).clamp_min(0)
    return s, (tail_energy / (q - k)).sqrt()  # RMS of the tail singular values stands in for the median


class SpectralDiagnostics:
    """Collects the diagnostics above; call ``before_step`` after backward and ``after_step`` after the step."""

    def __init__(self, model: nn.Module, every: int, exact_limit: int = 1024) -> None:
        self.every = every
        self.exact_limit = exact_limit
        seen: set[int] = set()
        self.matrices: list[tuple[str, nn.Parameter]] = []
        for name, p in model.named_parameters():
            if p.ndim == 2 and id(p) not in seen:
                seen.add(id(p))
                self.matrices.append((name, p))
        self.blocks = [(f"layers.{i}", b) for i, b in enumerate(getattr(model, "layers", []))]
        self._v: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}
        self._record: dict[str, Any] = {}
        self._activations: dict[str, tuple[Tensor, Tensor]] = {}

    def state_dict(self) -> dict[str, Tensor]:
        """The power-iteration warm starts (saved in checkpoints so a resumed run reports the same norms)."""
        return dict(self._v)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        names = {name for name, _ in self.matrices}
        self._v = {k: v for k, v in state.items() if k in names}

    def active(self, step: int, total: int) -> bool:
        """Whether step index ``step`` (0-based) ends a diagnostics interval or the run."""
        return self.every > 0 and ((step + 1) % self.every == 0 or step + 1 == total)

    @contextmanager
    def watch_activations(self, enabled: bool) -> Iterator[None]:
        """Record each block's output RMS and abs-max during the forward passes inside the context."""
        if not enabled:
            yield
            return
        handles = []
        for name, block in self.blocks:
            def hook(_module, _inputs, output, name=name):
                if name not in self._activations:
                    out = output.detach().float()
                    self._activations[name] = (out.pow(2).mean().sqrt(), out.abs().max())
            handles.append(block.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def before_step(self, step: int) -> None:
        layers: dict[str, dict[str, Any]] = {}
        spectra: dict[str, list[float]] = {}
        for name, p in self.matrices:
            entry: dict[str, Any] = {}
            if p.grad is not None:
                s, median = _grad_spectrum(p.grad.detach(), self.exact_limit)
                entry["grad_sigma_max"] = s[0]
                entry["grad_spike_ratio"] = s[0] / median.clamp_min(1e-30)
                entry["grad_frobenius"] = p.grad.detach().float().norm()
                spectra[name] = s
            self._before[name] = p.detach().clone()
            layers[name] = entry
        self._record = {"step": step, "layers": layers, "grad_spectra": spectra}

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Finish the record of this step and return it as plain Python numbers (the only host syncs)."""
        layers = self._record["layers"]
        for name, p in self.matrices:
            W = p.detach()
            sigma, _, v = spectral_norm(W, iters=3 if name in self._v else 20, v0=self._v.get(name))
            self._v[name] = v
            delta = W.float() - self._before.pop(name).float()
            layers[name].update(weight_spectral=sigma, weight_frobenius=W.float().norm(),
                                update_spectral=spectral_norm(delta, iters=10)[0], update_frobenius=delta.norm())
        record = {"step": self._record["step"],
                  "layers": {n: {k: float(v) for k, v in e.items()} for n, e in layers.items()},
                  "grad_spectra": {n: [float(x) for x in s.tolist()] for n, s in self._record["grad_spectra"].items()},
                  "activations": {n: {"rms": float(r), "absmax": float(a)} for n, (r, a) in self._activations.items()}}
        stats = getattr(optimizer, "statistics", None)
        if callable(stats):
            record["optimizer"] = {k: float(v) for k, v in stats().items()}
        self._activations.clear()
        self._record = {}
        return record


def summarize(record: dict[str, Any]) -> dict[str, float]:
    """Scalar summary of a diagnostics record for the main metrics stream."""
    layers = record["layers"].values()
    out: dict[str, float] = {}
    for key in ("weight_spectral", "weight_frobenius", "update_spectral", "grad_spike_ratio"):
        values = [e[key] for e in layers if key in e]
        if values:
            out[f"max_{key}"] = max(values)
    acts = record.get("activations", {})
    if acts:
        out["max_activation_absmax"] = max(a["absmax"] for a in acts.values())
    out.update({f"opt/{k}": v for k, v in record.get("optimizer", {}).items()})
    return out
