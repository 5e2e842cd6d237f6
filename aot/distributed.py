"""Collectives over data-parallel ranks, as plain functions (identities in one process).

- ``gather_global``: concatenate a 1-D tensor over all ranks, with a gradient (the global OT
  batch of ``aot_loss(gather=True)``);
- ``decide_on_main``, ``all_gather_objects``, ``barrier``: decisions taken once, on global rank 0,
  and seen by every rank (``aot.checkpoint``, ``aot.run``);
- ``shut_down``: the end of a training process (``scripts/train.py``).

Nothing here knows about models, trainers or configs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shut_down() -> None:
    """Wait for every rank, then destroy the default process group: the last call of a process
    that trained successfully (not after an error, where a peer may never reach the barrier).

    A process that exits with its group alive can abort on the way out: gloo's worker threads
    outlive the interpreter ("terminate called without an active exception", SIGABRT), which
    fails a finished run; the barrier also keeps ranks alive until rank 0 has written the run.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(obj) -> list:
    """``obj`` from every rank, in rank order."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def decide_on_main(fn):
    """``fn()`` run on global rank 0 only, its result given to every rank. An exception raised
    there is raised on every rank, so that no rank goes on alone."""
    result, error = None, None
    if rank_and_world()[0] == 0:
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every rank
            error = e
    if is_distributed():
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
    if error is not None:
        raise error
    return result


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of 1-D tensors of possibly different lengths per rank.

    Backward returns this rank's slice of the gradient times the world size. Every rank computes
    the same global loss, so its gradient with respect to the gathered tensor is the same on all
    ranks; the factor W undoes data parallelism's averaging, so averaged gradients equal the
    global loss's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.numel()], device=x.device))
        sizes = [int(s) for s in sizes]
        padded = x.new_zeros(max(sizes))
        padded[: x.numel()] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        start = sum(sizes[:rank])
        ctx.bounds, ctx.world = (start, start + x.numel()), world
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start, stop = ctx.bounds
        return grad[start:stop] * ctx.world


def gather_global(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n,) over all ranks in rank order; the identity in one process."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)
