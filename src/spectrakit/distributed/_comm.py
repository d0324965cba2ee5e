"""Collectives used by the distributed optimizer, with a per-rank count of the payload bytes they move.

The count is the payload this rank sends plus receives (independent of the algorithm the backend uses), so
numbers from different paths (broadcast, all-to-all, all-gather) can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor


class CommCounter:
    """Payload bytes sent and received by this rank since the last reset."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def reset(self) -> None:
        self.sent = 0
        self.received = 0

    def add(self, sent: int, received: int) -> None:
        self.sent += int(sent)
        self.received += int(received)


#: The module-wide counter (the row-sharded matrix functions run inside optimizer code and report here).
COUNTER = CommCounter()


def world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, world_size) within ``group`` (the default group when None)."""
    return dist.get_rank(group), dist.get_world_size(group)


def global_rank(group: dist.ProcessGroup | None, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def agreed_flag(flag: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """A 0-d bool on ``flag``'s device, the same on every rank: whether ``flag`` (0-d, nonzero = set) is set on
    any rank (one all-reduce, no host read)."""
    buf = flag.reshape(1).float()
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    _, size = world(group)
    COUNTER.add(4 * (size > 1), 4 * (size > 1))
    return buf[0] > 0


def any_flag(flag: Tensor, group: dist.ProcessGroup | None) -> bool:
    """``agreed_flag`` read on the host (one sync)."""
    return bool(agreed_flag(flag, group))


def broadcast_flat(tensors: Sequence[Tensor], src: int, group: dist.ProcessGroup | None) -> None:
    """Broadcast ``tensors`` (same dtype and device) from group rank ``src`` as one flat buffer, in place."""
    if not tensors:
        return
    rank, size = world(group)
    if rank == src:
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    else:
        flat = torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
    dist.broadcast(flat, src=global_rank(group, src), group=group)
    nbytes = flat.numel() * flat.element_size()
    COUNTER.add(nbytes * (size - 1) if rank == src else 0, 0 if rank == src else nbytes)
    if rank != src:
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def all_to_all_flat(send: Sequence[Sequence[Tensor]], recv_sizes: Sequence[int], dtype: torch.dtype,
                    device: torch.device, group: dist.ProcessGroup | None) -> list[Tensor]:
    """Send ``send[r]`` (a list of tensors, flattened and concatenated) to rank r; return what each rank sent us.

    ``recv_sizes[r]`` is the number of elements rank r sends to this rank. Returns one flat tensor per rank.
    """
    rank, size = world(group)
    pieces = [t.detach().reshape(-1).to(dtype) for chunk in send for t in chunk]
    send_sizes = [sum(t.numel() for t in chunk) for chunk in send]
    inp = torch.cat(pieces) if pieces else torch.empty(0, dtype=dtype, device=device)
    out = torch.empty(sum(recv_sizes), dtype=dtype, device=device)
    dist.all_to_all_single(out, inp, output_split_sizes=list(recv_sizes), input_split_sizes=send_sizes, group=group)
    itemsize = out.element_size()
    COUNTER.add((sum(send_sizes) - send_sizes[rank]) * itemsize, (sum(recv_sizes) - recv_sizes[rank]) * itemsize)
    return list(out.split(list(recv_sizes)))


def all_gather_equal(tensor: Tensor, group: dist.ProcessGroup | None) -> list[Tensor]:
    """All-gather a tensor of the same shape from every rank (returns them in rank order)."""
    _, size = world(group)
    out = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(out, tensor.contiguous(), group=group)
    nbytes = tensor.numel() * tensor.element_size()
    COUNTER.add(nbytes * (size - 1), nbytes * (size - 1))
    return out
