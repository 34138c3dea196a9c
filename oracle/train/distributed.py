"""Where this process sits in a distributed job: rank, world size, local rank and the rendezvous, read from the
environment that `torchrun` or SLURM's `srun` sets, and the process-group set-up shared by CPU and GPU runs.

CPU runs use the gloo backend with DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`); GPU runs use NCCL. The same
code path serves both: only the backend and the device differ.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from oracle_base.errors import ConfigurationError


class LaunchError(ConfigurationError):
    """The environment does not describe a usable distributed job; the message says which variable is wrong."""


@dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError as exc:
        raise LaunchError(f"{name}={environ[name]!r} is not an integer") from exc


def placement_from_env(environ: Mapping[str, str] | None = None) -> Placement:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK first, then SLURM's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; one
    process (rank 0 of 1) when neither is present. MASTER_ADDR/MASTER_PORT default to localhost:29500."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = (
            _int(env, "RANK"),
            _int(env, "WORLD_SIZE"),
            _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
        )
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
        local = _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
    else:
        rank, world, local = 0, 1, 0
    if not 0 <= rank < world:
        raise LaunchError(f"rank {rank} is outside a world of {world} processes; check RANK/WORLD_SIZE")
    if "MASTER_ADDR" not in env and int(env.get("SLURM_NNODES", "1") or 1) > 1:
        raise LaunchError(
            "a multi-node SLURM job needs MASTER_ADDR (the first node's host name) and MASTER_PORT in the environment"
        )
    port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
    return Placement(rank, world, local, env.get("MASTER_ADDR", "127.0.0.1"), port)


def device_for(placement: Placement) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", placement.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(placement: Placement) -> str:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on CUDA); returns the backend name.
    DS_ACCELERATOR must be chosen before deepspeed is first imported, so this module sets it first."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.update(
        RANK=str(placement.rank),
        WORLD_SIZE=str(placement.world_size),
        LOCAL_RANK=str(placement.local_rank),
        MASTER_ADDR=placement.master_addr,
        MASTER_PORT=str(placement.master_port),
    )
    if backend == "nccl":
        torch.cuda.set_device(device_for(placement))
    # DeepSpeed 0.19 calls torch.distributed functions that torch 2.13 deprecates: one warning per call otherwise.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return backend


def destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
