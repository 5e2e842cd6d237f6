"""Per-row completion log-probs of a whole split, in eval mode.

``row_logps`` scores rows with a model in one process. ``score_rows`` scores them through a
trainer's prepared (wrapped, sharded) model, the policy or its reference, under the run's
autocast, with the rows split across the ranks and gathered back in order: the diagnostics and
the reference precompute use it, so that they compute exactly what training computes.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.distributed.fsdp import FSDPModule

from aot.logps import sequence_logps
from aot.reference import trainer_reference


@torch.no_grad()
def row_logps(model, features: list[dict], collator, batch_size: int, device) -> torch.Tensor:
    """Completion log-probs per row, in row order: (N, 2) [chosen, rejected] or (N, 1)."""
    columns = 2 if "chosen_ids" in features[0] else 1
    out = []
    for start in range(0, len(features), batch_size):
        batch = collator.collate(features[start : start + batch_size])
        tensors = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        logps, _ = sequence_logps(model, tensors)  # (columns * b,) as [col 0 rows; col 1 rows]
        out.append(logps.float().cpu().reshape(columns, -1).T)
    return torch.cat(out)


def row_logps_over_ranks(model, features: list[dict], collator, batch_size: int, accelerator) -> torch.Tensor:
    """``row_logps`` over every row, each rank computing an equal share.

    Rows are padded (with copies of row 0) to a multiple of ranks x batch size so that every rank
    runs the same number of forwards (FSDP and ZeRO-3 gather parameters collectively), then the
    results are gathered in row order. Returns (N, columns) float32 on the CPU, on every rank.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(len(features) / world / batch_size) * batch_size
    padded = features + [features[0]] * (per_rank * world - len(features))
    mine = padded[rank * per_rank : (rank + 1) * per_rank]
    rows = row_logps(model, mine, collator, batch_size, accelerator.device).float()
    if world > 1:
        rows = accelerator.gather(rows.to(accelerator.device)).cpu()
    return rows[: len(features)]


def score_rows(trainer, features: list[dict], collator, batch_size: int, reference: bool = False):
    """Row log-probs of the policy (or its reference) through the trainer's prepared model, on
    every rank."""
    model = trainer.model_wrapped
    was_training = model.training
    model.eval()
    try:
        context = trainer_reference(trainer) if reference else contextlib.nullcontext(model)
        with context as m, trainer.accelerator.autocast():
            return row_logps_over_ranks(m, features, collator, batch_size, trainer.accelerator)
    finally:
        model.train(was_training)
        _reshard(model)


def _reshard(model) -> None:
    """FSDP2 keeps the root module's parameters unsharded after a forward (a backward usually
    follows at once); after no-grad passes nothing would free them, so reshard explicitly."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
