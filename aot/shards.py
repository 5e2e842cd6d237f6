"""FSDP2 checkpoint files: one per rank, holding that rank's slice of every trainable parameter
and of the optimizer state (``shard-rank<r>-of-<w>.pt``, written in parallel, nothing gathered);
and the whole model gathered one tensor at a time, for the final save. ``aot.checkpoint`` decides
when they are written and which are resumed. A shard file loads only into the same number of ranks.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from aot.distributed import rank_and_world


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed as it is, with the rank and file concerned."""


def shard_name(rank: int, world: int) -> str:
    return f"shard-rank{rank:05d}-of-{world:05d}.pt"


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def save_shard(model, optimizer, checkpoint_dir: Path) -> Path:
    """This rank's slice of every trainable parameter and of the optimizer state, in one file."""
    rank, world = rank_and_world()
    # clone(): a local shard may view a larger buffer, and torch.save writes a view's whole storage
    own = lambda t: _local(t).detach().cpu().clone()  # noqa: E731
    params = {n: own(p) for n, p in model.named_parameters() if p.requires_grad}
    optim = optimizer.state_dict()
    optim["state"] = {
        i: {k: own(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in optim["state"].items()
    }
    path = Path(checkpoint_dir) / shard_name(rank, world)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"world_size": world, "params": params, "optimizer": optim}, tmp)
    os.replace(tmp, path)
    return path


def _read_shard(checkpoint_dir: Path) -> dict:
    rank, world = rank_and_world()
    path = Path(checkpoint_dir) / shard_name(rank, world)
    if not path.is_file():
        written = sorted(p.name for p in Path(checkpoint_dir).glob("shard-rank*.pt"))
        raise CheckpointError(
            f"{path}: missing. This run has {world} ranks; the checkpoint holds {written or 'no shards'} "
            "(a sharded checkpoint resumes with the number of ranks that wrote it)"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def load_shard_params(model, checkpoint_dir: Path) -> None:
    """Copy this rank's saved slices into the (sharded) trainable parameters of ``model``."""
    saved = _read_shard(checkpoint_dir)["params"]
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != trainable.keys():
        raise CheckpointError(
            f"{checkpoint_dir}: the shard's parameters differ from the model's "
            f"({len(saved.keys() - trainable.keys())} extra, {len(trainable.keys() - saved.keys())} missing)"
        )
    with torch.no_grad():
        for name, p in trainable.items():
            _local(p).copy_(saved[name])


def load_shard_optimizer(optimizer, checkpoint_dir: Path) -> None:
    """Restore the optimizer state saved by this rank, in the layout (DTensor or not) of its parameters."""
    state = _read_shard(checkpoint_dir)["optimizer"]
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def placed(value, param):
        if not (torch.is_tensor(value) and value.dim() > 0 and isinstance(param, DTensor)):
            return value
        return DTensor.from_local(
            value.to(param.device),
            param.device_mesh,
            param.placements,
            shape=param.shape,
            stride=param.stride(),
        )

    state["state"] = {i: {k: placed(v, params[i]) for k, v in s.items()} for i, s in state["state"].items()}
    optimizer.load_state_dict(state)


# --- gathering a whole model -----------------------------------------------------------------------


def gather_weights(model, trainable_only: bool, dtype: torch.dtype | None = None) -> dict | None:
    """Whole tensors of an FSDP2-sharded ``model`` (collective, one tensor at a time): the trainable
    parameters, or the whole state dict, floating tensors cast to ``dtype``. Rank 0 gets the dict
    (on the CPU), other ranks ``None``."""
    rank, _ = rank_and_world()
    named = (
        [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if trainable_only
        else list(model.state_dict().items())
    )
    out = {}
    for name, tensor in named:
        whole = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
        if rank == 0:
            whole = whole.detach()
            if dtype is not None and whole.is_floating_point():
                whole = whole.to(dtype)
            out[name] = whole.cpu()
        del whole
    return out if rank == 0 else None
