"""Record every optimizer's 30-step trajectory on a small model, or compare two recordings (refactor check).

    python benchmarks/trajectories.py record OUT.pt            # losses and final weights of every configuration
    python benchmarks/trajectories.py compare BEFORE.pt AFTER.pt   # per configuration: bitwise or max difference

Float32, one thread, fixed seeds: two recordings of the same code are bitwise equal, so a refactor that keeps
the arithmetic shows "bitwise" for every configuration. The model has an embedding, a tall and a wide matrix,
a stack of matrices (3-D), a 1-D gain and a head, so every routing and chunking path is taken.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import spectrakit.optim as so

STEPS = 30


class TinyLM(nn.Module):
    """Embedding 64 x 16, a tall 48 x 16 and a wide 16 x 48 matrix twice (same shapes: stacked), a (2, 16, 16)
    stack, a 1-D gain and a 64 x 16 head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(64, 16)
        self.up = nn.ModuleList([nn.Linear(16, 48, bias=False) for _ in range(2)])
        self.down = nn.ModuleList([nn.Linear(48, 16, bias=False) for _ in range(2)])
        self.mix = nn.Parameter(torch.randn(2, 16, 16) / 4)
        self.gain = nn.Parameter(torch.ones(16))
        self.head = nn.Linear(16, 64, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for up, down in zip(self.up, self.down):
            x = x + down(torch.relu(up(x)))
        x = x + (x @ self.mix[0]).tanh() @ self.mix[1]
        return self.head(x * self.gain)


def configurations() -> dict[str, Callable[[nn.Module], Any]]:
    """name -> factory(model) of every optimizer configuration the step engine serves."""
    out: dict[str, Callable[[nn.Module], Any]] = {}
    for base in ("adamw", "signum", "mars", "ademamix", "momentum"):
        for clip in ("soft", "hard", "normalize", None):
            out[f"spectra-{base}-{clip}"] = lambda m, b=base, c=clip: so.Spectra(m, lr=3e-3, base=b, clip=c,
                                                                                   clip_c=1.0)
    out["spectra-adamw-soft-stats"] = lambda m: so.Spectra(m, lr=3e-3, clip_c=1.0, track_stats=True)
    out["spectra-adamw-soft-svd"] = lambda m: so.Spectra(m, lr=3e-3, clip_c=1.0, clip_method="svd")
    out["spectra-adamw-soft-ns"] = lambda m: so.Spectra(m, lr=3e-3, clip_c=1.0, clip_method="newton_schulz")
    out["spectra-adamw-hard-polar"] = lambda m: so.Spectra(m, lr=3e-3, clip="hard", clip_c=1.0, clip_method="polar")
    out["spectra-adamw-soft-authors-moonlight-matrices"] = lambda m: so.Spectra(
        m, lr=3e-3, clip_c=1.0, vector_rule="authors", scale="moonlight", clip_apply_to="matrices",
        clip_exclude=("head",))
    out["spectra-adamw-soft-decay-batch1"] = lambda m: so.Spectra(
        m, lr=3e-3, clip_c=1.0, clip_total_steps=STEPS, clip_decay_fraction=0.3, clip_batch=1,
        fallback=("vectors", "embeddings"))
    out["signum"] = lambda m: so.Signum(m, lr=3e-3)
    out["mars"] = lambda m: so.Mars(m, lr=3e-3)
    out["ademamix"] = lambda m: so.AdEMAMix(m, lr=3e-3, alpha_warmup=10, beta3_warmup=10)
    out["lion"] = lambda m: so.create("lion", m, lr=3e-4)
    out["spectra-lion"] = lambda m: so.create("spectra-lion", m, lr=3e-4, clip_c=1.0)
    out["normuon"] = lambda m: so.NorMuon(m, lr=3e-3)
    out["muon"] = lambda m: so.Muon(m, lr=2e-2)
    out["muon-keller-svd-stats"] = lambda m: so.Muon(m, lr=2e-2, ns_coefficients="keller", track_stats=True)
    out["muon-svd-moonlight"] = lambda m: so.Muon(m, lr=2e-2, ns_method="svd", scale="moonlight", batch=1)
    out["sso"] = lambda m: so.SSO(m, lr=2e-2)
    out["sso-illinois-dynamic"] = lambda m: so.SSO(m, lr=2e-2, solver="illinois", retraction="dynamic")
    out["muonsphere"] = lambda m: so.MuonSphere(m, lr=2e-2)
    out["spikeaware"] = lambda m: so.SpikeAware(m, lr=3e-3)
    out["wrapper-adamw"] = lambda m: so.SpectraWrapper(torch.optim.AdamW(m.parameters(), lr=3e-3), clip_c=1.0)
    out["wrapper-sgd"] = lambda m: so.SpectraWrapper(torch.optim.SGD(m.parameters(), lr=3e-2, momentum=0.9),
                                                     clip_c=1.0, decoupled_weight_decay=False, track_stats=True)
    return out


def trajectory(factory: Callable[[nn.Module], Any]) -> dict[str, Any]:
    """Losses of STEPS steps and the final weights (and the last statistics, if any)."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = factory(model)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        tokens = torch.randint(0, 64, (4, 12), generator=g)
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 64), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    stats = opt.statistics() if hasattr(opt, "statistics") else {}
    return {"losses": torch.stack(losses), "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "statistics": {k: v.detach().clone() for k, v in stats.items()}}


def record(path: str) -> None:
    torch.set_num_threads(1)
    out = {}
    for name, factory in configurations().items():
        out[name] = trajectory(factory)
        print(f"{name:<48} final loss {float(out[name]['losses'][-1]):.6f}")
    torch.save(out, path)


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[bool, float]:
    if a.keys() != b.keys():
        return False, float("inf")
    bitwise = all(torch.equal(a[k], b[k]) for k in a)
    diff = max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)
    return bitwise, diff


def compare(before: str, after: str) -> int:
    a, b = torch.load(before), torch.load(after)
    print("| configuration | losses | weights | statistics |\n|---|---|---|---|")
    worst = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"| {name} | only in {'after' if name in b else 'before'} | | |")
            continue
        cells = []
        for key in ("losses", "weights", "statistics"):
            x, y = a[name][key], b[name][key]
            same, diff = _max_difference(x if isinstance(x, dict) else {"": x}, y if isinstance(y, dict) else {"": y})
            cells.append("bitwise" if same else f"max diff {diff:.2e}")
            worst = max(worst, 0 if same else 1)
        print(f"| {name} | " + " | ".join(cells) + " |")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record").add_argument("out")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
