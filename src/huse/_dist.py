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
        torch.distributed.init_process_group(backend)
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def is_main() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision, seen by every rank (so all stop at the same epoch)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def teardown() -> None:
    """End the distributed part: what follows (evaluation, reports) runs on rank 0 alone."""
    global _finished
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _finished = True
