"""torch.distributed for training on several processes (GPUs or CPU processes), started by torchrun.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous address) for every process;
`init_distributed` joins the process group from them: NCCL when the process has a GPU, gloo on
CPU. Without those variables everything here is the single-process identity (rank 0 of 1), so
the trainer has one code path.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes the run folder, logs and checkpoints."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str) -> torch.device:
    """Join the process group when started by torchrun and return this process's device:
    `cuda:LOCAL_RANK` (NCCL) when CUDA is used, else the CPU (gloo)."""
    if not launched_by_torchrun():
        return resolve_device(device)
    chosen = resolve_device(device, int(os.environ.get("LOCAL_RANK", 0)))
    if not is_distributed():  # a second trainer in the same process keeps the group
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo",
                                device_id=chosen if chosen.type == "cuda" else None)
    return chosen


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """A config's device name ("auto", "cpu", "cuda", "cuda:N") as a torch.device; "auto" and
    "cuda" mean this process's GPU (its LOCAL_RANK under torchrun) when CUDA is there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def backend() -> str:
    return dist.get_backend() if is_distributed() else "none"


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` with several processes (it copies rank 0's weights
    to all at construction and averages gradients in backward); the model itself otherwise."""
    if not is_distributed():
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def shard_sampler(num_images: int, seed: int) -> torch.utils.data.DistributedSampler | None:
    """This process's shard of every epoch: the indices shuffled by (seed, epoch), identically on
    all processes, padded by repetition to a multiple of the world size and dealt out by rank.
    None with one process."""
    if not is_distributed():
        return None
    return torch.utils.data.DistributedSampler(range(num_images), num_replicas=world_size(), rank=rank(),
                                               shuffle=True, seed=seed, drop_last=False)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """Whether `flag` holds on every process (so that all of them take the same branch)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Every process's values averaged (for logging losses of the whole global batch)."""
    if not is_distributed() or not values:
        return values
    keys = list(values)  # the same order on every process, and the caller's
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: v / world_size() for k, v in zip(keys, tensor.tolist())}


def sum_over_processes(value: float, device: torch.device) -> float:
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's `obj` as a list in rank order on rank 0; None on the others."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
