"""DistributedSpectral: run any SpectralOptimizer under DDP or FSDP2 with the single-device update.

Every spectral update here is per matrix: it depends only on that matrix's gradient, parameter and state.
So the work can be split by matrix, and nothing about the math changes.

DDP (parameters replicated, gradients already all-reduced):
    each spectral matrix gets one owner rank (FLOP-balanced, see ``partition``). A rank runs the wrapped
    optimizer's rule only on the matrices it owns (their state lives only there, ZeRO-1 style); then each
    rank broadcasts its updated matrices as one flat buffer, so every rank ends with identical parameters.
    AdamW-routed parameters (elementwise, cheap) are updated redundantly on every rank.

FSDP2 (``fully_shard``: parameters and gradients are DTensors sharded on dim 0, possibly unevenly):
    - AdamW-routed parameters run on the local shards ("local" path; elementwise math needs nothing else).
    - "rows" path: optimizers whose spectral rule is elementwise math around soft_clip / hard_clip / msign run
      on the DTensor shards; those functions see a row-sharded DTensor and evaluate f(X) = Q f(R) from one
      all-gather of small n x n R factors (``rows``). State stays sharded like the parameter.
    - "owner" path (everything else: wide matrices, SSO, the spike-aware optimizer): one all-to-all brings the
      gradient and parameter shards of each matrix to its owner, the owner runs the rule on the full matrix
      (its state lives there, whole), and a second all-to-all returns the new rows to their shards. During
      the step the owner holds a full-size copy of each matrix it owns; its storage is freed between steps.
    Per matrix, the rows path is taken when the optimizer supports it and it moves fewer bytes.

Global decisions are consistent: the non-finite gradient check looks at the gradients each rank reads and
all-reduces one flag, so all ranks skip or raise together. LR schedulers see one optimizer whose
``param_groups`` are the wrapped optimizer's own.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from ..optim.routing import ADAMW
from ..optim.spectral_optimizer import NonFiniteGradientError, SpectralOptimizer, evaluate_closure
from ..optim.sync_free import found_nonfinite
from . import _comm
from .partition import balanced_owners, matrix_cost

PARALLEL_MODES = ("auto", "ddp", "fsdp")
ROWS_PATH_CHOICES = ("auto", "never", "always")
REPLICATED, LOCAL, ROWS, OWNER = "replicated", "local", "rows", "owner"

_WRAPPER_PREFIX = re.compile(r"(^|\.)(module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")


def canonical_name(name: str) -> str:
    """A parameter name without wrapper prefixes (DDP's ``module.``, torch.compile's ``_orig_mod.``)."""
    previous = None
    while previous != name:
        previous, name = name, _WRAPPER_PREFIX.sub(r"\1", name)
    return name


def is_dtensor(x: object) -> bool:
    return type(x).__name__ == "DTensor"


@dataclass
class Member:
    """One parameter of the wrapped optimizer and how this wrapper treats it."""

    group: int
    index: int
    name: str
    param: Tensor
    rule: str
    path: str
    owner: int | None  # rank that computes its update (None: every rank)
    cost: float


def _dim0_sizes(rows: int, size: int) -> list[int]:
    """Rows per rank of FSDP2's dim-0 sharding (torch.chunk: ceil-sized chunks, trailing ranks may get 0)."""
    chunk = -(-rows // size) if rows else 0
    return [max(0, min(chunk, rows - r * chunk)) for r in range(size)]


class DistributedSpectral(Optimizer):
    """Wrap a :class:`~spectrakit.optim.SpectralOptimizer` so DDP or FSDP2 ranks share its matrix work.

    Args:
        optimizer: the optimizer, built on every rank over the same parameters in the same order (for FSDP2,
            after ``fully_shard``, so its parameters are DTensors).
        parallel: "ddp" (replicated parameters), "fsdp" (DTensor parameters sharded on dim 0) or "auto"
            (fsdp when any parameter is a DTensor).
        group: the process group (DDP; default: the world). FSDP2 uses the parameters' 1-D device mesh.
        rows_path: FSDP2 only: "auto" (row-sharded evaluation where supported and cheaper), "never", or
            "always" (every matrix the optimizer supports it for). Supported: matrices sharded on dim 0 in
            groups for which the optimizer's ``rows_capable(group)`` is True (the step engine: when the group's
            transform is a unitarily invariant map of each whole matrix).

    Non-finite gradients: every rank checks the gradients it reads and the ranks agree on one flag (one all-reduce),
    so all skip (or raise) together. When the wrapped optimizer's steps are sync-free (``sync_free``), the flag
    stays on the device and the step is masked by it (``SpectralOptimizer.masked_by``): no host read.

    The update equals the wrapped optimizer's single-process update up to floating-point round-off (DDP and
    the FSDP2 owner path run the identical computation on the full matrix; the rows path evaluates f(X) as
    Q f(R)). ``ownership_report()`` says which rank computes what and by which path; ``last_step_bytes`` is
    the payload this rank moved in the last step (sent + received; DDP's own gradient all-reduce excluded).

    Example (``torchrun --nproc_per_node=N train.py``)::

        ctx = init_from_env()                                   # spectrakit.distributed
        model = parallelize(model.to(ctx.device), "fsdp", ctx)  # or "ddp"
        opt = DistributedSpectral(Spectra(model, lr=1e-3))      # build the optimizer on the wrapped model
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, t / 100))
        ...                                                      # loss.backward(); opt.step(); sched.step()
        save_checkpoint("ckpt/step1000", model, opt)            # on every rank; loads on any world size
        shutdown()
    """

    def __init__(self, optimizer: SpectralOptimizer, *, parallel: str = "auto",
                 group: dist.ProcessGroup | None = None, rows_path: str = "auto") -> None:
        if not isinstance(optimizer, SpectralOptimizer):
            raise TypeError(f"optimizer must be a SpectralOptimizer, got {type(optimizer).__name__}")
        if parallel not in PARALLEL_MODES:
            raise ValueError(f"parallel must be one of {PARALLEL_MODES}, got {parallel!r}")
        if rows_path not in ROWS_PATH_CHOICES:
            raise ValueError(f"rows_path must be one of {ROWS_PATH_CHOICES}, got {rows_path!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedSpectral needs an initialized process group (torch.distributed)")
        has_dtensor = any(is_dtensor(p) for g in optimizer.param_groups for p in g["params"])
        if parallel == "auto":
            parallel = "fsdp" if has_dtensor else "ddp"
        if parallel == "ddp" and has_dtensor:
            raise ValueError("parallel='ddp' but the optimizer holds DTensor parameters; use parallel='fsdp'")
        self.optimizer = optimizer
        self.parallel = parallel
        self.rows_path = rows_path
        self._group = group if parallel == "ddp" else self._mesh_group(optimizer)
        self._rank, self._world = _comm.world(self._group)
        self._proxies: dict[int, Tensor] = {}  # id(param) -> full-size plain tensor on its owner (FSDP owner path)
        self._members: list[Member] = []
        self.last_step_bytes = {"sent": 0, "received": 0}
        self._initializing = True
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._initializing = False
        self.param_groups = optimizer.param_groups  # the same list: LR schedulers drive the wrapped optimizer
        self.state = optimizer.state
        self._plan()

    # ------------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _mesh_group(optimizer: SpectralOptimizer) -> dist.ProcessGroup:
        meshes = []
        for p in (p for g in optimizer.param_groups for p in g["params"] if is_dtensor(p)):
            if not any(p.device_mesh == mesh for mesh in meshes):
                meshes.append(p.device_mesh)
        if len(meshes) != 1:
            raise ValueError(f"parallel='fsdp' needs all DTensor parameters on one device mesh, found {len(meshes)}")
        mesh = meshes[0]
        if mesh.ndim != 1:
            raise ValueError(f"parallel='fsdp' supports 1-D device meshes (FSDP2), got a {mesh.ndim}-D mesh")
        return mesh.get_group()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self._initializing:  # Optimizer.__init__ registering the wrapped optimizer's groups
            super().add_param_group(param_group)
            return
        self.optimizer.add_param_group(param_group)
        self._plan()

    def _path(self, p: Tensor, group: dict[str, Any]) -> str:
        rule = group["rule"]
        if self.parallel == "ddp":
            return REPLICATED if rule == ADAMW else OWNER
        if not is_dtensor(p):
            raise ValueError("parallel='fsdp' needs every parameter sharded by fully_shard (a DTensor)")
        if rule == ADAMW:
            return LOCAL
        if p.dim() < 2 or any(type(pl).__name__ != "Shard" or pl.dim != 0 for pl in p.placements):
            return OWNER
        if self.rows_path == "never" or not self.optimizer.rows_capable(group):
            return OWNER
        if self.rows_path == "always":
            return ROWS
        m, n = p.shape[-2], p.shape[-1]
        batch = p.numel() // (m * n)
        size = self._world
        rows_bytes = batch * size * (size - 1) * n * n       # all-gather of one n x n R factor per rank
        owner_bytes = 3 * p.numel() * (size - 1) // size       # gradient + parameter in, parameter out
        return ROWS if rows_bytes < owner_bytes else OWNER

    def _plan(self) -> None:
        members = []
        for gi, group in enumerate(self.param_groups):
            for pi, (name, p) in enumerate(zip(group["param_names"], group["params"])):
                path = self._path(p, group)
                cost = self.optimizer.transform_flops(group, p)
                members.append(Member(gi, pi, canonical_name(name), p, group["rule"], path, None,
                                      matrix_cost(tuple(p.shape)) if cost is None else cost))
        owned = [m for m in members if m.path == OWNER]
        for m, rank in zip(owned, balanced_owners([tuple(m.param.shape) for m in owned], self._world,
                                                  [m.cost for m in owned])):
            m.owner = rank
        self._members = members

    def ownership_report(self) -> str:
        """A table of every parameter: rule, path (replicated / local / rows / owner) and owner rank."""
        width = max([len("parameter")] + [len(m.name) for m in self._members])
        lines = [f"{self.parallel} over {self._world} ranks",
                 f"{'parameter':<{width}}  {'shape':<16} {'rule':<9} {'path':<10} owner  est. flops"]
        for m in self._members:
            owner = "all" if m.owner is None else str(m.owner)
            lines.append(f"{m.name:<{width}}  {str(list(m.param.shape)):<16} {m.rule:<9} {m.path:<10} "
                         f"{owner:<6} {m.cost:.3g}")
        load = [0.0] * self._world
        for m in self._members:
            if m.owner is not None:
                load[m.owner] += m.cost
        lines.append("owner-path flops per rank: " + ", ".join(f"{r}: {v:.3g}" for r, v in enumerate(load)))
        return "\n".join(lines)

    def routing_report(self) -> str:
        """The wrapped optimizer's routing table, then the ownership table."""
        return self.optimizer.routing_report() + "\n\n" + self.ownership_report()

    def statistics(self) -> dict[str, Tensor]:
        """The wrapped optimizer's statistics of the last step (for the parameters this rank updated)."""
        return self.optimizer.statistics()

    @property
    def members(self) -> list[Member]:
        """How each parameter is handled (group, index, canonical name, rule, path, owner)."""
        return list(self._members)

    # -------------------------------------------------------------------------------------------- step
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for proxy in self._proxies.values():
            proxy.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One step of the wrapped optimizer with the work split across ranks."""
        loss = evaluate_closure(closure)
        _comm.COUNTER.reset()
        try:
            if self.optimizer.steps_sync_free() and self.optimizer.nonfinite != "ignore":
                # no host read: the ranks agree on a device flag, and the wrapped optimizer masks its step by it
                masking = self.optimizer.masked_by(_comm.agreed_flag(self._local_nonfinite(), self._group))
            elif not self._gradients_usable():
                self.optimizer.skipped_steps += 1
                return loss
            else:
                masking = contextlib.nullcontext()
            with masking:
                self._step_split()
        finally:
            self.last_step_bytes = {"sent": _comm.COUNTER.sent, "received": _comm.COUNTER.received}
        return loss

    def _step_split(self) -> None:
        if self.parallel == "ddp":
            with self._restricted(self._ddp_view()):
                self.optimizer.step()
            self._broadcast_owned()
        else:
            self._gather_to_owners()
            with self._restricted(self._fsdp_view()):
                self.optimizer.step()
            self._scatter_from_owners()

    def _reads_gradient(self, m: Member) -> bool:
        return m.owner is None or m.owner == self._rank or self.parallel == "fsdp"

    def _gradients_usable(self) -> bool:
        """Check the gradients this rank reads (FSDP: its shards); all ranks agree through one flag."""
        if self.optimizer.nonfinite == "ignore":
            return True
        if not _comm.any_flag(self._local_nonfinite(), self._group):
            return True
        if self.optimizer.nonfinite == "skip":
            return False
        grads = self._read_gradients()
        bad = [name for name, g in grads if not bool(torch.isfinite(g).all())]
        gathered: list[list[str]] = [[] for _ in range(self._world)]
        dist.all_gather_object(gathered, bad, group=self._group)
        names = sorted({n for part in gathered for n in part})
        raise NonFiniteGradientError(
            f"non-finite gradient in parameter(s) {', '.join(names)}; no parameter was changed. "
            "Pass nonfinite='skip' to skip such steps instead.")

    def _read_gradients(self) -> list[tuple[str, Tensor]]:
        """(name, local gradient) of the gradients this rank reads (FSDP: its shards)."""
        grads = [(m.name, m.param.grad) for m in self._members if m.param.grad is not None and self._reads_gradient(m)]
        return [(name, g.to_local() if is_dtensor(g) else g) for name, g in grads]

    def _local_nonfinite(self) -> Tensor:
        """A 0-d bool on the collectives' device: whether a gradient this rank reads is non-finite (no host read)."""
        local = [g for _, g in self._read_gradients() if g.numel()]
        flag = found_nonfinite(local) if local else torch.zeros((), dtype=torch.bool)
        return flag.to(self._device())

    def _device(self) -> torch.device:
        """Where collectives run (NCCL needs CUDA tensors): the device of the parameters' (local) data."""
        first = self._members[0].param if self._members else None
        if first is None:
            return torch.device("cpu")
        return first.to_local().device if is_dtensor(first) else first.device

    @contextlib.contextmanager
    def _restricted(self, view: list[list[tuple[str, Tensor]]]) -> Iterator[None]:
        """Let the wrapped optimizer see only ``view[g]`` in group g (its own check is done already)."""
        saved = [(g["params"], g["param_names"]) for g in self.param_groups]
        policy = self.optimizer.nonfinite
        try:
            for g, members in zip(self.param_groups, view):
                g["param_names"] = [n for n, _ in members]
                g["params"] = [t for _, t in members]
            self.optimizer.nonfinite = "ignore"
            yield
        finally:
            self.optimizer.nonfinite = policy
            for g, (params, names) in zip(self.param_groups, saved):
                g["params"], g["param_names"] = params, names

    def _empty_view(self) -> list[list[tuple[str, Tensor]]]:
        return [[] for _ in self.param_groups]

    def _ddp_view(self) -> list[list[tuple[str, Tensor]]]:
        view = self._empty_view()
        for m in self._members:
            if m.owner is None or m.owner == self._rank:
                view[m.group].append((self.param_groups[m.group]["param_names"][m.index], m.param))
        return view

    def _fsdp_view(self) -> list[list[tuple[str, Tensor]]]:
        view = self._empty_view()
        for m in self._members:
            name = self.param_groups[m.group]["param_names"][m.index]
            if m.path in (LOCAL, ROWS):
                view[m.group].append((name, m.param))
            elif m.owner == self._rank:
                view[m.group].append((name, self._proxy(m)))
        return view

    # ------------------------------------------------------------------------------------- DDP exchange
    def _broadcast_owned(self) -> None:
        for rank in range(self._world):
            by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
            for m in self._members:
                if m.owner == rank:
                    by_dtype.setdefault((m.param.dtype, m.param.device), []).append(m.param.data)
            for tensors in by_dtype.values():
                _comm.broadcast_flat(tensors, rank, self._group)

    # ------------------------------------------------------------------------------ FSDP owner exchange
    def _proxy(self, m: Member) -> Tensor:
        """The full-size plain tensor standing for ``m.param`` on its owner (keys the optimizer state)."""
        key = id(m.param)
        if key not in self._proxies:
            local = m.param.to_local()
            self._proxies[key] = torch.zeros(tuple(m.param.shape), dtype=local.dtype, device=local.device)
        return self._proxies[key]

    def _owner_members(self) -> dict[tuple[torch.dtype, torch.device], list[Member]]:
        out: dict[tuple[torch.dtype, torch.device], list[Member]] = {}
        for m in self._members:
            if m.path == OWNER:
                local = m.param.to_local()
                out.setdefault((local.dtype, local.device), []).append(m)
        return out

    def _row_split(self, m: Member) -> list[int]:
        sizes = _dim0_sizes(m.param.shape[0], self._world)
        local_rows = m.param.to_local().shape[0]
        if sizes[self._rank] != local_rows:
            raise RuntimeError(f"{m.name}: local shard has {local_rows} rows, expected {sizes[self._rank]} "
                               "(only FSDP2's dim-0 chunked sharding is supported)")
        return sizes

    def _gather_to_owners(self) -> None:
        """All-to-all: every rank sends its parameter and gradient rows of each matrix to the matrix's owner."""
        for (dtype, device), members in self._owner_members().items():
            send: list[list[Tensor]] = [[] for _ in range(self._world)]
            recv = [0] * self._world
            for m in members:
                rows = self._row_split(m)
                row_numel = math.prod(m.param.shape[1:])
                grad = m.param.grad
                local_grad = grad.to_local() if grad is not None else torch.zeros_like(m.param.to_local())
                send[m.owner] += [m.param.to_local(), local_grad]
                if m.owner == self._rank:
                    for r in range(self._world):
                        recv[r] += 2 * rows[r] * row_numel
            pieces = _comm.all_to_all_flat(send, recv, dtype, device, self._group)
            offsets = [0] * self._world
            for m in members:
                if m.owner != self._rank:
                    continue
                rows = self._row_split(m)
                row_numel = math.prod(m.param.shape[1:])
                params, grads = [], []
                for r in range(self._world):
                    n = rows[r] * row_numel
                    params.append(pieces[r][offsets[r]:offsets[r] + n])
                    grads.append(pieces[r][offsets[r] + n:offsets[r] + 2 * n])
                    offsets[r] += 2 * n
                proxy = self._proxy(m)
                storage = proxy.untyped_storage()
                if storage.size() == 0:  # freed after the previous step
                    storage.resize_(proxy.numel() * proxy.element_size())
                proxy.copy_(torch.cat(params).view(proxy.shape))
                proxy.grad = torch.cat(grads).view(proxy.shape) if m.param.grad is not None else None

    def _scatter_from_owners(self) -> None:
        """All-to-all: each owner returns the updated rows of its matrices to the ranks that hold them."""
        for (dtype, device), members in self._owner_members().items():
            send: list[list[Tensor]] = [[] for _ in range(self._world)]
            recv = [0] * self._world
            for m in members:
                rows = self._row_split(m)
                row_numel = math.prod(m.param.shape[1:])
                recv[m.owner] += rows[self._rank] * row_numel
                if m.owner == self._rank:
                    proxy = self._proxy(m)
                    for r, part in enumerate(proxy.split(rows)):
                        send[r].append(part)
                    proxy.grad = None
            pieces = _comm.all_to_all_flat(send, recv, dtype, device, self._group)
            for m in members:  # the rows are sent: free the full-size copies until the next step
                if m.owner == self._rank:
                    self._proxy(m).untyped_storage().resize_(0)
            offsets = [0] * self._world
            for m in members:
                local = m.param.to_local()
                n = local.numel()
                local.copy_(pieces[m.owner][offsets[m.owner]:offsets[m.owner] + n].view_as(local))
                offsets[m.owner] += n

    # ------------------------------------------------------------------------------------- checkpoints
    def state_key(self, m: Member) -> Tensor:
        """The tensor that keys the optimizer state of ``m`` on this rank (its owner-path proxy or the parameter)."""
        return self._proxy(m) if m.path == OWNER and self.parallel == "fsdp" else m.param

    def held_members(self) -> list[Member]:
        """Parameters whose optimizer state this rank holds (DDP/FSDP owner path: owned; others: all)."""
        return [m for m in self._members if m.owner is None or m.owner == self._rank]

    def state_by_name(self) -> dict[str, dict[str, Any]]:
        """This rank's optimizer state keyed by canonical parameter name (for distributed checkpoints)."""
        out = {}
        for m in self.held_members():
            state = self.optimizer.state.get(self.state_key(m))
            if state:
                out[m.name] = dict(state)
        return out

    def load_state_by_name(self, named: dict[str, dict[str, Any]]) -> None:
        """Install state for the parameters this rank holds (values are used as given)."""
        for m in self.held_members():
            if m.name in named:
                self.optimizer.state[self.state_key(m)] = dict(named[m.name])

    def state_dict(self) -> dict[str, Any]:
        """This rank's part: {"state": {name: {...}}, "param_groups": [...], "spectrakit": {...}}.

        Not torch's positional format: the state of a parameter lives on the rank that owns it. Use
        ``spectrakit.distributed.save_checkpoint`` to write a checkpoint that any world size can load.
        """
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"state": self.state_by_name(), "param_groups": groups,
                "spectrakit": {"skipped_steps": self.optimizer.skipped_steps}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (of any rank layout: entries this rank does not hold are ignored)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has {len(self.param_groups)}")
        for g, saved in zip(self.param_groups, groups):
            g.update({k: v for k, v in saved.items() if k not in ("params", "param_names")})
        self.load_state_by_name({k: {kk: vv.clone() if isinstance(vv, Tensor) else vv for kk, vv in v.items()}
                                 for k, v in state_dict["state"].items()})
        self.optimizer.skipped_steps = int(state_dict.get("spectrakit", {}).get("skipped_steps", 0))
