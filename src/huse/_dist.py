"""torchrun support: one process group per run, started on first use.

Under ``torchrun`` (WORLD_SIZE > 1) extraction shards the missing items across ranks and
training wraps the net in DistributedDataParallel; only rank 0 evaluates and writes.
"""

from __future__ import annotations

import os

import torch

_finished = False


def setup() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if _finished:
        return (0, 1) if is_main() else (int(os.environ.get("RANK", 0)), world)
    if world <= 1 or not torch.distributed.is_available():
        return 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":  # one GPU per rank: a bare "cuda" then means this rank's
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the GPU under nccl, the CPU under gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order; the backward hands each rank the sum
    over ranks of the gradient of its own rows (every rank's loss uses every row)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        ctx.rows = (rank * len(x), (rank + 1) * len(x))
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)
        return grad[ctx.rows[0] : ctx.rows[1]]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (same shape on all ranks) stacked along dim 0, gradients flowing
    back to each rank's own rows; ``x`` itself outside torchrun."""
    if not _active():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (``x`` itself outside torchrun)."""
    if not _active():
        return x
    y = x.detach().clone()
    torch.distributed.all_reduce(y)
    return y / torch.distributed.get_world_size()


def all_reduce_sum(values: list[int]) -> list[int]:
    """Element-wise sums of integer counters over ranks (the list itself outside torchrun)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_comm_device())
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.cpu().tolist()]


def is_main() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision, seen by every rank (so all stop at the same epoch)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_comm_device())
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def teardown() -> None:
    """End the distributed part: what follows (evaluation, reports) runs on rank 0 alone."""
    global _finished
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _finished = True
