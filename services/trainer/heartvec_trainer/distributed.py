"""Running alone or under `torchrun`: process group, device and rank helpers."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among `world_size` and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device_name: str | None = None) -> Runtime:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), pick the device.

    NCCL on GPUs, gloo on CPUs. `device_name` ('cpu', 'cuda') overrides the automatic choice.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_name is None else device_name.startswith("cuda")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(rank, local_rank, world_size, device)


def stop(runtime: Runtime) -> None:
    """Leave the process group so that its threads are joined here, not at interpreter exit.

    DistributedDataParallel sits in a reference cycle, so a model that went out of scope still
    holds the group until the garbage collector runs; if that happens only at exit, gloo's
    threads are destroyed unjoined and the process aborts ("terminate called without an active
    exception", SIGABRT). Collect first, wait for every rank, then destroy.
    """
    if runtime.distributed and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
