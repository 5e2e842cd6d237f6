"""The preference trainer: one forward path for every method, the loss picked by name.

A thin ``transformers.Trainer`` subclass (no TRL code copied). Each batch holds sequences
``prompt + completion``; the policy's and the reference's summed completion log-probs give the
implicit rewards ``r = logp_policy - logp_ref`` and, for paired rows, the margins
``logp(y+) - logp(y-)``. Methods then differ only in the loss (``aot.methods.METHODS``):

- aot_unpaired: chosen rewards vs rejected rewards. Paired rows give n chosen and n rejected
  values; truly unpaired rows give whatever the batch holds, from different prompts and in
  unequal numbers, and the exact unequal-size objective is used. No KTO-style KL pass.
- aot_paired, dpo, ipo: policy margins vs reference margins (paired rows only). IPO uses
  length-averaged log-probs, as TRL does.

Beyond the paper and TRL (docs/objective.md): the OT batch can be global (``gather``), and
larger than memory (the two-pass step, ``micro_batches`` from the collator); reference
log-probs may come precomputed with the batch (``ref_logps``).

Shapes: a batch of B paired rows is S = 2B sequences [chosen; rejected]; of B unpaired rows,
S = B. ``input_ids``/``attention_mask``/``completion_mask`` are (S, L).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from typing import Callable

import torch
from accelerate.utils import DistributedType
from transformers import Trainer, TrainerCallback

from aot.batches import BothLabelsSampler, merge_micro_batches
from aot.checkpoint import ShardedCheckpoints
from aot.distributed import gather_global
from aot.logps import DEFAULT_CHUNK, sequence_logps
from aot.methods import METHODS, check_rows
from aot.metrics import fsd_violation, reward_accuracy
from aot.reference import shard_reference, trainer_reference

log = logging.getLogger("aot")


class TrainerHooks(ShardedCheckpoints):
    """Trainer mixin (ours and TRL's KTOTrainer): this repo's checkpoints, and one ordered list of
    what runs once the Trainer has prepared the model (wrapped, sharded, placed, resumed from a
    checkpoint) and before the first step. Steps are ``(what, fn)``, run in the order added:
    the reference sharded, what ran described, reference log-probs precomputed, diagnostics."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.once_prepared: list[tuple[str, Callable[[], object]]] = []
        self.add_callback(_OncePrepared(self))


class _OncePrepared(TrainerCallback):
    def __init__(self, trainer: TrainerHooks):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        for what, fn in self.trainer.once_prepared:
            log.debug("once prepared: %s", what)
            fn()


# --- the loss of one batch ---------------------------------------------------------------------------


def preference_loss(method: str, logps, ref_logps, lengths, batch: dict, loss_kwargs: dict):
    """The loss of ``method`` on one batch, and detached statistics for logging."""
    is_chosen = batch["is_chosen"]
    check_rows(method, "paired" if batch["paired"] else "unpaired", "this batch")
    if method == "ipo":  # TRL's IPO: log-probs averaged over completion tokens
        logps, ref_logps = logps / lengths.clamp_min(1), ref_logps / lengths.clamp_min(1)
    rewards = logps - ref_logps  # (S,)
    if method == "aot_unpaired":
        u, v = rewards[is_chosen], rewards[~is_chosen]
        if (u.numel() == 0 or v.numel() == 0) and not loss_kwargs.get("gather"):
            raise ValueError(
                f"aot_unpaired needs chosen and rejected rows in each batch, got {u.numel()} and {v.numel()}"
            )
    else:
        u, v = logps[is_chosen] - logps[~is_chosen], ref_logps[is_chosen] - ref_logps[~is_chosen]
    loss = METHODS[method](u, v, **loss_kwargs)
    u, v = u.detach(), v.detach()
    if loss_kwargs.get("gather"):  # log the OT batch that was actually sorted: the global one
        u, v = gather_global(u), gather_global(v)
    # Reward metrics describe the whole global batch, whatever was sorted: every rank's rows
    # (rank order keeps the k-th chosen and k-th rejected of a paired batch aligned).
    rewards, is_chosen = gather_global(rewards.detach()), gather_global(is_chosen.to(rewards.dtype)).bool()
    return loss, reward_stats(rewards, is_chosen, batch["paired"], loss_kwargs["beta"], u, v)


def reward_stats(rewards, is_chosen, paired: bool, beta: float, u=None, v=None) -> dict[str, float]:
    """TRL-style reward metrics (rewards scaled by beta) plus the AOT-specific ones."""
    rc, rr = beta * rewards[is_chosen].double().cpu(), beta * rewards[~is_chosen].double().cpu()
    stats = {}
    if len(rc) and len(rr):
        stats.update(
            {
                "rewards/chosen": rc.mean().item(),
                "rewards/rejected": rr.mean().item(),
                "rewards/accuracies": reward_accuracy(rc, rr, paired),
                "rewards/margins": (rc.mean() - rr.mean()).item(),
            }
        )
    if u is not None and len(u) and len(v):
        stats["ot_batch/chosen"], stats["ot_batch/rejected"] = float(len(u)), float(len(v))
        stats["fsd_violation"] = fsd_violation(u.double(), v.double())
    return stats


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


class PreferenceTrainer(TrainerHooks, Trainer):
    """``Trainer`` with the preference forward pass; ``method`` names a loss in ``aot.losses.LOSSES``."""

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps

    def __init__(
        self,
        *args,
        method: str,
        loss_kwargs: dict,
        ref_model=None,
        logps_chunk: int = DEFAULT_CHUNK,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.method, self.loss_kwargs, self.ref_model = method, loss_kwargs, ref_model
        self.logps_chunk = logps_chunk  # tokens per output-head chunk; 0 = full-vocabulary logits
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        if ref_model is not None:  # full fine-tuning: the frozen copy is placed/sharded like the policy
            self.once_prepared.append(("shard the frozen reference like the policy", self._shard_reference))

    def _shard_reference(self) -> None:
        self.ref_model = shard_reference(self, self.ref_model)

    def reference(self):
        return trainer_reference(self)

    def reference_logps(self, inputs) -> torch.Tensor:
        if "ref_logps" in inputs:  # precomputed once per dataset (train.precompute_ref)
            return inputs["ref_logps"]
        with torch.no_grad(), self.reference() as ref:
            return sequence_logps(ref, inputs, self.logps_chunk)[0]

    def _record(self, model, stats: dict) -> None:
        mode = "train" if model.training else "eval"
        for key, value in stats.items():
            self._metrics[mode][key].append(value)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "micro_batches" in inputs:  # evaluation of a two-pass batch: merge, no gradient needed
            inputs = merge_micro_batches(inputs["micro_batches"])
        logps, lengths = sequence_logps(model, inputs, self.logps_chunk)
        ref_logps = self.reference_logps(inputs)
        loss, stats = preference_loss(self.method, logps, ref_logps, lengths, inputs, self.loss_kwargs)
        self._record(model, stats)
        return (loss, None) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "micro_batches" not in inputs:
            return super().training_step(model, inputs, num_items_in_batch)
        return self._two_pass_step(model, self._prepare_inputs(inputs)["micro_batches"])

    def _two_pass_step(self, model, micro: list[dict]) -> torch.Tensor:
        """Exact gradient of the loss over all micro-batches, at the memory of one.

        Pass 1 (no graph): every log-prob, and the loss's gradient with respect to each one on
        that detached set (gathered across ranks when the OT batch is global). Pass 2: each
        micro-batch again with a graph, backpropagating ``sum(logp * dL/dlogp)``. The RNG state
        of each micro-batch's first forward is replayed so that dropout masks match.
        """
        model.train()
        states, logps, refs, lengths = [], [], [], []
        with torch.no_grad():
            for mb in micro:
                states.append(_rng_state())
                lp, n = sequence_logps(model, mb, self.logps_chunk)
                logps.append(lp)
                lengths.append(n)
                refs.append(self.reference_logps(mb))
        merged = {"is_chosen": torch.cat([mb["is_chosen"] for mb in micro]), "paired": micro[0]["paired"]}
        # Masking by is_chosen keeps pairs aligned: the k-th chosen and k-th rejected share a row.
        all_logps = torch.cat(logps).requires_grad_()
        loss, stats = preference_loss(
            self.method, all_logps, torch.cat(refs), torch.cat(lengths), merged, self.loss_kwargs
        )
        (grad,) = torch.autograd.grad(loss, all_logps)
        grad = grad / self.current_gradient_accumulation_steps  # scaled once, here
        offset, replay_error = 0, torch.zeros((), device=all_logps.device)
        for k, (mb, state) in enumerate(zip(micro, states)):
            _set_rng_state(state)
            last = k == len(micro) - 1
            with self._micro_batch_sync(model, last):
                lp, _ = sequence_logps(model, mb, self.logps_chunk)
                self._backward((lp * grad[offset : offset + len(lp)]).sum(), last)
            # Pass 2 must recompute pass 1's values (same dropout masks); logged, 0 when it does.
            replay_error = torch.maximum(replay_error, (lp.detach() - logps[k]).abs().max())
            offset += len(lp)
        stats["two_pass/replay_error"] = gather_global(replay_error.float().reshape(1)).max().item()
        self._record(model, stats)
        return loss.detach() / self.current_gradient_accumulation_steps

    def _micro_batch_sync(self, model, last: bool):
        """DDP: skip the gradient all-reduce on all but the last micro-batch. FSDP reduce-scatters
        each micro-batch's gradient into the shards (``no_sync`` would keep whole unsharded
        gradients); DeepSpeed's boundary is set in ``_backward``."""
        ddp = self.accelerator.distributed_type in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU)
        return self.accelerator.no_sync(model) if ddp and not last else contextlib.nullcontext()

    def _backward(self, loss, last: bool) -> None:
        """One micro-batch's backward. Under DeepSpeed ``accelerator.backward`` would make the
        engine step after every micro-batch and divide by the accumulation steps again: here the
        engine accumulates, marks the boundary and steps only on the step's last micro-batch."""
        if not self.is_deepspeed_enabled:
            self.accelerator.backward(loss)
            return
        boundary = last and self.accelerator.sync_gradients
        self.accelerator.deepspeed_engine_wrapped.backward(loss, sync_gradients=boundary, scale_wrt_gas=False)

    def _prepare_input(self, data):
        """The Trainer's device move, except that precomputed reference log-probs keep float32:
        under DeepSpeed the Trainer casts every floating tensor to the engine's dtype, and a bf16
        reference log-prob sum is off by up to 1-2 nats at the sums of real answers."""
        if isinstance(data, dict) and "ref_logps" in data:
            moved = super()._prepare_input({k: v for k, v in data.items() if k != "ref_logps"})
            moved["ref_logps"] = data["ref_logps"].to(self.args.device)
            return moved
        return super()._prepare_input(data)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset and "label" in dataset[0] and self.method == "aot_unpaired":
            labels = [f["label"] for f in dataset]
            return BothLabelsSampler(
                labels, self.args.per_device_train_batch_size, self.args.seed, self.args.world_size
            )
        return super()._get_train_sampler(train_dataset)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, start_time)
