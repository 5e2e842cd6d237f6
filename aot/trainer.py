"""The preference trainer: one forward path for every method, the loss picked by name.

A thin ``transformers.Trainer`` subclass (no TRL code copied). Each batch holds sequences
``prompt + completion``; the policy's and the reference's summed completion log-probs give the
implicit rewards ``r = logp_policy - logp_ref`` and, for paired rows, the margins
``logp(y+) - logp(y-)``. Methods then differ only in the loss (``aot.losses.LOSSES``):

- aot_unpaired: chosen rewards vs rejected rewards. Paired rows give n chosen and n rejected
  values; truly unpaired rows (prompt/completion/label) give whatever the batch holds, from
  different prompts and in unequal numbers, and the exact unequal-size objective is used. No
  KTO-style KL pass is computed.
- aot_paired, dpo, ipo: policy margins vs reference margins (paired rows only). IPO uses
  length-averaged log-probs, as TRL does.

The reference is the base model with the LoRA adapter disabled (no second copy in memory), or
a separate frozen model for full fine-tuning.

Where this departs from the paper's setup and TRL, and why:

1. The OT batch can be global: with ``gather`` in the loss kwargs every rank's values are sorted
   together (exact global-batch gradient), instead of each GPU sorting its own micro-batch.
2. The two-pass step (``micro_batches`` from the collator) sorts more rows than fit in memory at
   once, exactly: pass 1 without a graph gives dL/dlogp for every row, pass 2 backpropagates it
   micro-batch by micro-batch with the RNG replayed (same dropout masks).
3. Truly unpaired batches use the exact unequal-size objective, and the sampler guarantees both
   labels in every batch.
4. Reference log-probs may come precomputed with the batch (``ref_logps``).

Shapes: a batch of B paired rows is S = 2B sequences [chosen; rejected]; of B unpaired rows,
S = B. ``input_ids``/``attention_mask``/``completion_mask`` are (S, L).
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback

from aot.checkpoint import ShardedCheckpoints
from aot.data import Split
from aot.logps import DEFAULT_CHUNK, sequence_logps
from aot.losses import LOSSES, PAIRED_ONLY, fsd_violation, gather_global, reward_accuracy

# --- tokenisation ------------------------------------------------------------------------------


def _render(tokenizer, prompt, completion) -> tuple[str, str]:
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full_text.startswith(prompt_text):
        # Templates that rewrite earlier turns: fall back to the raw answer text plus EOS.
        return prompt_text, "".join(m["content"] for m in completion) + (tokenizer.eos_token or "")
    return prompt_text, full_text[len(prompt_text) :]


def tokenize_split(
    split: Split, tokenizer, max_length: int, max_prompt_length: int
) -> tuple[list[dict], dict]:
    """Token ids per row; prompts keep their last ``max_prompt_length`` tokens (counted)."""
    completions = ("chosen", "rejected") if split.kind == "paired" else ("completion",)
    features, counts = [], {"prompts_truncated": 0, "completions_truncated": 0}
    for row in split.rows:
        feature = {}
        for name in completions:
            prompt_text, completion_text = _render(tokenizer, row["prompt"], row[name])
            feature["prompt_ids"] = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            feature[f"{name}_ids"] = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
        if len(feature["prompt_ids"]) > max_prompt_length:
            feature["prompt_ids"] = feature["prompt_ids"][-max_prompt_length:]
            counts["prompts_truncated"] += 1
        room = max_length - len(feature["prompt_ids"])
        for name in completions:
            if len(feature[f"{name}_ids"]) > room:
                feature[f"{name}_ids"] = feature[f"{name}_ids"][:room]
                counts["completions_truncated"] += 1
        if split.kind == "unpaired":
            feature["label"] = row["label"]
        features.append(feature)
    return features, counts


@dataclass
class PreferenceCollator:
    """Pads paired rows to 2B sequences [chosen; rejected], unpaired rows to B sequences.

    With ``micro_batch_size`` set (the two-pass step), returns ``{"micro_batches": [...]}``, each
    padded on its own. Rows carrying ``ref_logps`` (precomputed) add a ``ref_logps`` (S,) tensor.
    """

    pad_token_id: int
    micro_batch_size: int | None = None

    def __call__(self, features: list[dict]) -> dict:
        if self.micro_batch_size:
            k = self.micro_batch_size
            return {"micro_batches": [self.collate(features[i : i + k]) for i in range(0, len(features), k)]}
        return self.collate(features)

    def collate(self, features: list[dict]) -> dict:
        paired = "chosen_ids" in features[0]
        if paired:
            seqs = [(f["prompt_ids"], f["chosen_ids"]) for f in features]
            seqs += [(f["prompt_ids"], f["rejected_ids"]) for f in features]
            is_chosen = [True] * len(features) + [False] * len(features)
        else:
            seqs = [(f["prompt_ids"], f["completion_ids"]) for f in features]
            is_chosen = [bool(f["label"]) for f in features]
        width = max(len(p) + len(c) for p, c in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(seqs), width, dtype=torch.long)
        completion_mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, (p, c) in enumerate(seqs):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
            attention_mask[i, : len(p) + len(c)] = 1
            completion_mask[i, len(p) : len(p) + len(c)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
            "is_chosen": torch.tensor(is_chosen),
            "paired": paired,
        }
        if "ref_logps" in features[0]:  # per row: [chosen, rejected] or [completion]
            columns = (0, 1) if paired else (0,)
            batch["ref_logps"] = torch.tensor([f["ref_logps"][c] for c in columns for f in features])
        return batch


class BothLabelsSampler(Sampler):
    """Shuffles unpaired rows so that every batch of ``batch_size`` holds both labels.

    The order is cut into the blocks the DataLoader will batch (``batch_size`` rows each, the last
    one shorter); each block gets one chosen and one rejected row, and the other slots are filled
    at random (so the chosen/rejected counts differ from batch to batch, as with truly unpaired
    data). Rows left out of an epoch (a different few each epoch, from the larger class):

    - one process: one row when ``len % batch_size == 1`` (a block of one row cannot hold both);
    - ``num_processes`` > 1: ``len % batch_size`` rows, so that every batch is full. accelerate
      hands each rank whole batches of this order and, to give every rank the same number, pads
      the last round with rows from the start of the epoch; with full batches that padding is
      whole blocks, while a short last batch would be topped up across a block boundary.

    Too few rows of one label for one per block is an error naming the batch size that works.
    """

    def __init__(self, labels: list[bool], batch_size: int, seed: int, num_processes: int = 1):
        self.labels, self.batch_size, self.seed, self.epoch = labels, batch_size, seed, 0
        self.num_processes = num_processes
        n_chosen = sum(map(bool, labels))
        fewest, blocks = min(n_chosen, len(labels) - n_chosen), len(self._sizes())
        if fewest < blocks:
            need = -(-len(labels) // max(fewest, 1))
            raise ValueError(
                f"{n_chosen} chosen and {len(labels) - n_chosen} rejected rows cannot put both labels in each "
                f"of {blocks} batches of {batch_size}: use a per-device batch of at least {need} "
                f"(or a dataset with more rows of the rarer label)"
            )

    def _sizes(self) -> list[int]:
        n, b = len(self.labels), self.batch_size
        if self.num_processes > 1 and n >= b:
            n -= n % b  # full batches only
        elif n % b == 1 and n > 1:
            n -= 1  # no block of one row
        return [min(b, n - s) for s in range(0, n, b)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self._sizes())

    def __iter__(self):
        rng = random.Random(self.seed + self.epoch)
        chosen = [i for i, y in enumerate(self.labels) if y]
        rejected = [i for i, y in enumerate(self.labels) if not y]
        rng.shuffle(chosen)
        rng.shuffle(rejected)
        sizes = self._sizes()
        for _ in range(len(self.labels) - sum(sizes)):  # rows left out, from the larger class
            (chosen if len(chosen) > len(rejected) else rejected).pop()
        # One reserved slot of each label per block; the remaining chosen rows land in random free
        # slots (a block of b rows has b - 2 free ones).
        free = [k for k, size in enumerate(sizes) for _ in range(size - 2)]
        n_chosen = [1] * len(sizes)
        for k in rng.sample(free, len(chosen) - len(sizes)):
            n_chosen[k] += 1
        for size, k_chosen in zip(sizes, n_chosen):
            block = [chosen.pop() for _ in range(k_chosen)] + [rejected.pop() for _ in range(size - k_chosen)]
            rng.shuffle(block)
            yield from block


# --- log-probabilities and losses ---------------------------------------------------------------


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


def preference_loss(method: str, logps, ref_logps, lengths, batch: dict, loss_kwargs: dict):
    """The loss of ``method`` on one batch, and detached statistics for logging."""
    is_chosen = batch["is_chosen"]
    if method in PAIRED_ONLY and not batch["paired"]:
        raise ValueError(f"loss={method} needs paired rows (prompt/chosen/rejected); use aot_unpaired or kto")
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
    loss = LOSSES[method](u, v, **loss_kwargs)
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


def merge_micro_batches(micro: list[dict]) -> dict:
    """One batch from micro-batches (padded to a common width), same row layout rules."""
    width = max(mb["input_ids"].shape[1] for mb in micro)

    def cat(key):  # right-pad with zeros: masked out by attention_mask and completion_mask
        return torch.cat([torch.nn.functional.pad(mb[key], (0, width - mb[key].shape[1])) for mb in micro])

    out = {
        "input_ids": cat("input_ids"),
        "attention_mask": cat("attention_mask"),
        "completion_mask": cat("completion_mask"),
        "is_chosen": torch.cat([mb["is_chosen"] for mb in micro]),
        "paired": micro[0]["paired"],
    }
    if "ref_logps" in micro[0]:
        out["ref_logps"] = torch.cat([mb["ref_logps"] for mb in micro])
    return out


def _rng_state() -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


@contextlib.contextmanager
def adapters_disabled(model):
    """Bypass every LoRA layer of ``model`` without touching ``requires_grad``.

    peft's ``disable_adapter()`` also sets ``requires_grad=False`` on the adapter weights for the
    duration. FSDP2 records which parameters are trainable at the model's first forward, so a
    reference pass that comes first (precompute, diagnostics) would leave the adapter marked
    frozen and the next backward fails in bf16. Here only the layers' bypass flag is switched.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    previous = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, flag in zip(layers, previous):
            m._disable_adapters = flag


@contextlib.contextmanager
def reference_of(policy, ref_model=None, wrapped=None):
    """Yields the reference model: a frozen copy when given, else the LoRA policy with its
    adapter disabled (``wrapped``, if set, is the distributed wrapper to run instead)."""
    if ref_model is not None:
        yield ref_model
        return
    with adapters_disabled(policy):
        yield wrapped if wrapped is not None else policy


def trainer_reference(trainer):
    """The reference of a prepared trainer (ours or TRL's): its prepared frozen copy, or its
    wrapped LoRA policy with the adapter bypassed."""
    wrapped = trainer.model_wrapped
    return reference_of(
        trainer.accelerator.unwrap_model(wrapped), getattr(trainer, "ref_model", None), wrapped
    )


class AfterPreparation(TrainerCallback):
    """Runs ``fn()`` once the Trainer has prepared the model (wrapped, sharded, placed on its
    device, resumed from a checkpoint) and before the first step. What needs the prepared
    model, on every rank (precompute, diagnostics, the reference copy), runs here."""

    def __init__(self, fn):
        self.fn = fn

    def on_train_begin(self, args, state, control, **kwargs):
        self.fn()


class PreferenceTrainer(ShardedCheckpoints, Trainer):
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
            self.add_callback(AfterPreparation(self._prepare_reference))

    def _prepare_reference(self) -> None:
        from aot.distributed import prepare_reference

        if not getattr(self, "_reference_prepared", False):
            self.ref_model, self._reference_prepared = prepare_reference(self, self.ref_model), True

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
        from accelerate.utils import DistributedType

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
