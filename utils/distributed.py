"""torchrun support: one process per GPU (or per CPU group with gloo), keyed on the variables torchrun sets.

    torchrun --nproc_per_node=4 train.py --amp          # one machine, four GPUs
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --nproc_per_node=8 train.py ...

Without torchrun the same code runs as a world of one, so the training loop has a single path.
"""

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

PEER_GONE = ("Connection closed by peer", "Connection reset by peer")  # gloo's words for a process that stopped


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints and logs, and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun prepared (NCCL on GPUs, gloo on CPUs); a world of one otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]),
                  int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    if world.size == 1:
        return world
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started {world.local_size} processes on this node but only "
                            f"{torch.cuda.device_count()} GPUs are visible: lower --nproc_per_node")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        dist.init_process_group("gloo")
    else:
        raise UserError(f"torchrun on {device.type} is not supported: use CUDA GPUs or --device cpu")
    return world


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def _peers(world: World) -> Iterator[None]:
    """A collective whose peer has stopped (its own error, e.g. a missing --imgs folder that rank 0 alone checks,
    or a signal) fails with a backend traceback about closed connections: one line instead, which points at the
    process that failed first. Any other error (a wrong dtype, a CUDA fault) stays as it is."""
    try:
        yield
    except RuntimeError as error:
        text = str(error).strip()
        # NCCL's and the network's are DistErrors; gloo reports a peer gone as a plain RuntimeError
        if not isinstance(error, dist.DistError) and not any(sign in text for sign in PEER_GONE):
            raise
        # gloo starts with the place in its own source ("[/.../gloo/transport/tcp/pair.cc:545] Read error ..."):
        # not the user's to read
        reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])[:100] if text else type(error).__name__
        raise UserError(f"rank {world.rank}: another process of this torchrun run stopped first, see its error "
                        f"({reason})") from None


def barrier(world: World) -> None:
    if world.distributed:
        with _peers(world):
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum over ranks, in place (a copy on the process group's device for gloo/NCCL), returned."""
    if world.distributed:
        with _peers(world):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def buffers_from_rank_0(model: nn.Module, world: World) -> None:
    """Every process's buffers (BatchNorm's running statistics) made rank 0's, the ones its checkpoint holds. DDP
    sends them out at the start of each training step, and the last step then updates each process's own from its
    own batch: validated so, each process scored its images with statistics no saved model has (a metrics review
    measured 0.5753 against evaluate.py's 0.5757 on the saved checkpoint)."""
    if world.distributed:
        with _peers(world):
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)


def smallest_everywhere(value: int, world: World, device: torch.device) -> int:
    """The smallest of the processes' values: a setting each derives from its own machine (the batch size that
    fits a GPU's free memory) that all must share."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], device=device)
    with _peers(world):
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def check_same_everywhere(world: World, key: object, seen: str, fix: str) -> None:
    """Stop every process with one line when they see different things (a node-local --checkpoint-dir or data
    folder): they would otherwise train different numbers of batches and wait on each other forever, or
    silently disagree. seen describes the process's view ("resumes checkpoints/last.pth (epoch 3)"); key is
    what must be equal."""
    if not world.distributed:
        return
    views: list = [None] * world.size
    with _peers(world):
        dist.all_gather_object(views, (key, seen, socket.gethostname()))
    first_key, first_seen, first_host = views[0]
    for rank, (other_key, other_seen, host) in enumerate(views):
        if other_key != first_key:
            raise UserError(f"the processes disagree: rank 0 (on {first_host}) {first_seen} but rank {rank} "
                            f"(on {host}) {other_seen}: {fix}")
