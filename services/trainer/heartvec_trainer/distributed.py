"""Running alone or under `torchrun`: process group, device and rank helpers."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from heartvec.errors import InputError


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its rank among `world_size` and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str = "gloo"

    @property
    def collective_device(self) -> torch.device:
        """Where tensors for collectives live: NCCL needs them on the GPU, gloo takes both."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start(device_name: str | None = None, backend: str | None = None) -> Runtime:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), pick the device.

    Args:
        device_name: 'cpu' or 'cuda' (default: cuda when available). 'cuda' where CUDA does
            not work is an error, not a run on the CPU.
        backend: 'nccl' or 'gloo' (default: NCCL on GPUs, gloo on CPUs). Ranks get a GPU each
            (local rank modulo the GPUs); with gloo several ranks may share one, which NCCL
            refuses: a test of multi-rank training on a machine with one GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_name is None else device_name.startswith("cuda")
    if backend not in (None, "nccl", "gloo"):
        raise InputError("HEARTVEC_DIST_BACKEND", f"{backend!r}: expected nccl or gloo")
    if use_cuda:
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'}"
            raise InputError("--device", f"{device_name}: CUDA is not available here ({build})")
        backend = backend or "nccl"
        gpus = torch.cuda.device_count()
        if backend == "nccl" and local_rank >= gpus:
            raise InputError(
                "--device",
                f"local rank {local_rank} but {gpus} GPU(s): NCCL needs a GPU per rank "
                "(HEARTVEC_DIST_BACKEND=gloo lets ranks share one)",
            )
        device = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(device)
    else:
        backend = backend or "gloo"
        if backend == "nccl":
            raise InputError("HEARTVEC_DIST_BACKEND", "nccl needs GPUs (--device cuda)")
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    return Runtime(rank, local_rank, world_size, device, backend)


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
