"""Training on N processes (torchrun, torch DistributedDataParallel): the process group, each rank's share of a
batch, how gradients and decisions reach every rank.

torchrun (torch.distributed.run) starts N copies of the train stage; each reads its rank from the environment
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT). Every rank draws the same global batches
from the same seeded generator and trains on its rows of each (`shard_rows`), so `train.batch_size` stays the
global batch. With one process nothing here communicates and training is the single-process code.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from twinhead.errors import TwinheadError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the rank on this node: which GPU it drives

    @property
    def main(self) -> bool:
        """Rank 0: the one that evaluates, prints, writes files and talks to MLflow."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting its environment) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def env_world() -> World:
    """The world torchrun describes in the environment (one process when not launched by it)."""
    if not launched():
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def current() -> World:
    """The world of the initialised process group (one process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def check_nproc(nproc: int) -> None:
    """Under torchrun, train.nproc must be the number of processes it started on this node: the params DVC
    records then describe the run."""
    if not launched():
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if local != nproc:
        raise TwinheadError(f"params.yaml: train.nproc is {nproc} but torchrun started {local} process(es) on "
                            f"this node (--nproc_per_node); set train.nproc: {local}")


def torchrun_command(nproc: int, script: str, args: list[str]) -> list[str]:
    """The command that runs `script args` on `nproc` local processes: torchrun's single-node mode picks a free
    port, so that parallel runs (dvc exp run --queue with several jobs) do not collide."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script,
            *args]


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join torchrun's process group for the duration (NCCL on CUDA, gloo on the CPU); without torchrun, or
    with a world of one, nothing is set up and the world is one process."""
    world = env_world()
    if world.size == 1:
        yield World()
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def shard_rows(n: int, world: World) -> list[int]:
    """This rank's rows of a batch of n: every size-th from its rank (batches are sorted by length, so the
    ranks get similar lengths). Empty when the batch has fewer rows than there are ranks."""
    return list(range(world.rank, n, world.size))


def broadcast(obj, world: World):
    """Rank 0's `obj` on every rank (a picklable object)."""
    if world.size == 1:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, world: World) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the others)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum of `t` over the ranks (in place)."""
    if world.size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class GradSync:
    """How the ranks' gradients become the batch's: DDP averages them during the backward pass (bucketed,
    overlapping it). A loss rule that takes the tasks' gradients with torch.autograd.grad (grad_mean) writes
    `.grad` itself and never fires DDP's hooks: it runs under `no_sync()` and the finished gradients are
    averaged in one all-reduce (`finish`). Averaging after the rule is exact for it: grad_mean is linear in
    the task gradients. With one process `net` is the module itself and nothing communicates.
    """

    def __init__(self, module: nn.Module, world: World, rule_writes_grads: bool, find_unused: bool):
        self.module, self.world = module, world
        self.manual = world.size > 1 and rule_writes_grads
        self.net: nn.Module = module
        if world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # device_ids None: the batch is already on this rank's device, and the host-side lengths the
            # packing needs must stay on the host (DDP would move every input tensor to the device).
            # Buffers are constants (the BIO masks): nothing to sync before each forward. torch 2.13 names
            # that forward_sync_buffers (and warns on broadcast_buffers); older releases know only the latter.
            no_sync = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
            self.net = DistributedDataParallel(module, device_ids=None, find_unused_parameters=find_unused,
                                               **no_sync)

    def context(self):
        """Around the forward and the rule's backward."""
        return self.net.no_sync() if self.manual else nullcontext()

    def finish(self) -> None:
        """After the rule's backward: average the gradients over the ranks when DDP did not."""
        if not self.manual:
            return
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]  # the same set on every rank
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
