"""Several processes under `torchrun` (WORLD_SIZE > 1): one job, trained data-parallel.

Why it is shaped this way: methods' `train_step` receive the plain model and call `model(x)`;
they look up layers, masks and parameters by name, which a `DistributedDataParallel` wrapper
would hide behind `module.`. So the model keeps its names and, while `fit` runs, its forward is
routed through a DDP replica (`replicated`), which averages gradients across ranks on backward.

Every rank builds the same model from the same seed, loads the same checkpoint, draws the same
permutation of the training set each epoch and takes its share of every global batch
(`--batch-size` is the global batch; each rank trains on batch_size / WORLD_SIZE samples a step),
so scores, masks and weights stay equal; `check_identical` proves it once an epoch. Only rank 0
writes files, holds the run lock and prints (`is_main`); the others follow its decisions
(`on_main`) and wait for it at the end (`finish`).

Backends: gloo for CPU tensors, NCCL for CUDA ones (both registered when CUDA is present, so
`--device cpu` works on a GPU machine too). The process group starts at the first collective.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from ticketkit.errors import JobError, TicketkitError, UsageError

T = TypeVar("T")
NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


def world_size() -> int:
    """How many processes torchrun started for this job (1 outside torchrun)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0) if world_size() > 1 else 0


def active() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def _group() -> Any:
    """The default process group, started on first use (torchrun's env:// rendezvous)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist


def local_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (LOCAL_RANK) when the device is CUDA without an index."""
    if not active() or device.type != "cuda" or device.index is not None:
        return device
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    torch.cuda.set_device(device)
    return device


def check_batch(batch_size: int) -> None:
    if active() and batch_size % world_size():
        raise UsageError(
            f"--batch-size {batch_size} is the global batch and must split evenly over the "
            f"{world_size()} processes (each trains on batch-size / WORLD_SIZE samples a step)"
        )


def shard(order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """This rank's share of each global batch of the permutation `order`.

    The permutation is padded with its first indices to a multiple of the world size (as
    torch's DistributedSampler does), so every rank takes the same number of steps with equal,
    non-empty shares, and DDP's average of the ranks' mean losses is the global batch's mean.
    """
    n, w = len(order), world_size()
    padded = torch.cat([order, order[: (-n) % w]])
    for start in range(0, len(padded), batch_size):
        yield padded[start : start + batch_size]


def steps(n: int, batch_size: int) -> int:
    """Steps an epoch of `n` samples takes (the padded permutation of `shard`)."""
    w = world_size()
    return -(-(n + (-n) % w) // batch_size)


@contextlib.contextmanager
def replicated(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Route `model`'s forward through a DistributedDataParallel replica for the block.

    The method keeps calling `model(x)`: the call enters DDP (which prepares the gradient
    all-reduce of the backward), DDP calls the model again, and that inner call runs the
    model's own forward. Nothing changes outside torchrun.
    """
    if not active() or not any(p.requires_grad for p in model.parameters()):
        yield
        return
    from torch.nn.parallel import DistributedDataParallel

    _group()
    # no buffer broadcast each forward: masks are recomputed on every rank (and checked), and
    # normalisation statistics are synced once an epoch (check_identical)
    sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        **{"forward_sync_buffers" if sync else "broadcast_buffers": False},
    )
    own = model.forward
    inside = [False]

    def forward(*args: Any, **kwargs: Any) -> Any:
        if inside[0]:
            return own(*args, **kwargs)
        inside[0] = True
        try:
            return ddp(*args, **kwargs)
        finally:
            inside[0] = False

    model.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.forward  # the replica (and its gradient hooks) goes with the closure


def reduce_sums(sums: torch.Tensor, seen: int) -> tuple[float, float, int]:
    """The epoch's (loss sum, correct, samples) over all ranks, for the metrics line."""
    if not active():
        loss, correct = sums.tolist()
        return loss, correct, seen
    total = torch.cat([sums, torch.tensor([float(seen)], dtype=sums.dtype, device=sums.device)])
    _group().all_reduce(total)
    loss, correct, n = total.tolist()
    return loss, correct, int(n)


def check_identical(model: nn.Module, epoch: int) -> None:
    """Stop with a clear error if any rank's parameters, scores or masks differ from rank 0's.

    Normalisation statistics legitimately differ (each rank sees its own share), so rank 0's
    are copied to all first, which also makes every rank's evaluation the same. Each tensor's
    checksum weights elements by position, so moved mask entries are caught, not only counts.
    """
    if not active():
        return
    dist = _group()
    named = []
    for name, tensor in model.state_dict(keep_vars=True).items():  # no scratch buffers
        if name.rsplit(".", 1)[-1] in NORM_STATS:
            dist.broadcast(tensor.data, 0)
        named.append((name, tensor.detach()))
    if not named:
        return
    sums = []
    for _, t in named:
        flat = t.reshape(-1).double()
        weights = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64)
        sums.append((flat * weights.remainder(65521).add(1)).sum())
    high = torch.stack(sums)
    low = -high
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    differ = (high != -low).tolist()
    if any(differ):
        name = named[differ.index(True)][0]
        raise JobError(
            f"the {world_size()} processes disagree after epoch {epoch + 1}: '{name}' differs "
            f"between ranks (masks and scores must be computed identically on every rank; "
            f"does the method draw random numbers that depend on the process?)"
        )


def check_resumed(stage: str, epoch: int, where: str) -> None:
    """Stop every rank with a clear error if they resume at different points (stage, epoch):
    a rank that cannot see rank 0's checkpoints (a node whose --out is not the shared
    filesystem) would start over and train other epochs than the others, which then wait in a
    collective the rest never reach."""
    if not active():
        return
    point = torch.tensor([zlib.crc32(stage.encode()), epoch], dtype=torch.long)
    gathered = [torch.zeros_like(point) for _ in range(world_size())]
    _group().all_gather(gathered, point)
    if any(not torch.equal(other, point) for other in gathered):
        stages = all_gather_objects(stage)
        starts = [int(t[1]) for t in gathered]
        by_rank = ", ".join(
            f"rank {r}: {s}" if len(set(stages)) == 1 else f"rank {r}: stage {n} epoch {s}"
            for r, (n, s) in enumerate(zip(stages, starts, strict=True))
        )
        raise JobError(
            f"the processes resume {where} from different epochs ({by_rank}): every node "
            f"must see the same run directory; under several nodes put --out on a shared "
            f"filesystem"
        )


def all_gather_objects(value: T) -> list[T]:
    """Every rank's `value`, in rank order (picklable objects, through the CPU group)."""
    gathered: list[Any] = [None] * world_size()
    _group().all_gather_object(gathered, value)
    return gathered


def on_main(work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only (taking the run lock, writing the config) and hand its
    result, or the error it raised, to every rank, so all of them go on or stop together."""
    if not active():
        return work()
    dist = _group()
    payload: list[Any] = [None]
    if is_main():
        try:
            payload[0] = ("ok", work())
        except TicketkitError as exc:
            payload[0] = ("error", exc)
            dist.broadcast_object_list(payload, src=0, device=torch.device("cpu"))
            raise
    dist.broadcast_object_list(payload, src=0, device=torch.device("cpu"))
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def finish() -> None:
    """At the end of a successful command: the other ranks wait for rank 0 (which writes the
    artifact and results row last), then the process group closes."""
    import torch.distributed as dist

    if active() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def abandon() -> None:
    """After a failed command: close the process group without waiting for the others."""
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
