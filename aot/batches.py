"""Rows to batches: tokenising, collating, and the order in which unpaired rows are batched.

- ``tokenize_split``: token ids of each row, rendered with the model's chat template; over-long
  prompts keep their last tokens and completions are cut to what is left (both counted).
- ``PreferenceCollator``: paired rows become 2B sequences [chosen; rejected], unpaired rows B
  sequences with their labels, either padded to the longest or packed (padding-free: one row,
  ``aot.packing``); with ``micro_batch_size`` (the two-pass step) a batch arrives as
  micro-batches, each padded or packed on its own; ``merge_micro_batches`` undoes that.
- ``BothLabelsSampler``: every batch of unpaired rows holds both labels.

Shapes, padded: ``input_ids``, ``attention_mask``, ``completion_mask`` are (S, L). Packed:
``input_ids``, ``position_ids`` (restarting at 0 for each sequence), ``completion_mask`` are
(1, T) with T = sum of the S lengths, ``cu_seq_lens`` (S + 1,) int32 the sequence boundaries
and ``longest`` the longest sequence. Either way ``is_chosen`` is (S,), in the same order.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from aot.data import Split


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
    """Paired rows to 2B sequences [chosen; rejected], unpaired rows to B sequences, padded to the
    longest or (``packed``) concatenated into one row.

    With ``micro_batch_size`` set (the two-pass step), returns ``{"micro_batches": [...]}``, each
    collated on its own. Rows carrying ``ref_logps`` (precomputed) add a ``ref_logps`` (S,) tensor.
    """

    pad_token_id: int
    micro_batch_size: int | None = None
    packed: bool = False

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
        batch = pack(seqs) if self.packed else pad(seqs, self.pad_token_id)
        batch.update(is_chosen=torch.tensor(is_chosen), paired=paired)
        if "ref_logps" in features[0]:  # per row: [chosen, rejected] or [completion]
            columns = (0, 1) if paired else (0,)
            batch["ref_logps"] = torch.tensor([f["ref_logps"][c] for c in columns for f in features])
        return batch


def pad(seqs: list[tuple[list, list]], pad_token_id: int) -> dict:
    """(prompt, completion) token lists as (S, L) tensors, right-padded to the longest."""
    width = max(len(p) + len(c) for p, c in seqs)
    input_ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(seqs), width, dtype=torch.long)
    completion_mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p) : len(p) + len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pack(seqs: list[tuple[list, list]]) -> dict:
    """(prompt, completion) token lists as one (1, T) row with the sequence boundaries. A
    sequence's first token is never scored (nothing before it in its own sequence), as in a
    padded row."""
    lengths = [len(p) + len(c) for p, c in seqs]
    if min(lengths) == 0:
        raise ValueError("an empty sequence (no prompt and no completion tokens) cannot be packed")
    completion = [[0] * len(p) + [1] * len(c) for p, c in seqs]
    for flags in completion:
        flags[0] = 0
    return {
        "input_ids": torch.tensor([t for p, c in seqs for t in p + c]).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
        "completion_mask": torch.tensor([f for flags in completion for f in flags]).unsqueeze(0),
        "cu_seq_lens": torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32),
        "longest": max(lengths),
    }


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


def merge_micro_batches(micro: list[dict]) -> dict:
    """One batch from micro-batches (padded ones to a common width; packed ones into one row),
    same sequence order."""
    if "cu_seq_lens" in micro[0]:
        offsets = itertools.accumulate((int(mb["cu_seq_lens"][-1]) for mb in micro[:-1]), initial=0)
        bounds = [mb["cu_seq_lens"][:-1] + off for mb, off in zip(micro, offsets)]
        out = {
            key: torch.cat([mb[key] for mb in micro], dim=1)
            for key in ("input_ids", "position_ids", "completion_mask")
        }
        total = torch.tensor([out["input_ids"].shape[1]], dtype=torch.int32)
        out.update(cu_seq_lens=torch.cat([*bounds, total]), longest=max(mb["longest"] for mb in micro))
    else:
        width = max(mb["input_ids"].shape[1] for mb in micro)

        def cat(key):  # right-pad with zeros: masked out by attention_mask and completion_mask
            return torch.cat(
                [torch.nn.functional.pad(mb[key], (0, width - mb[key].shape[1])) for mb in micro]
            )

        out = {key: cat(key) for key in ("input_ids", "attention_mask", "completion_mask")}
    out.update(is_chosen=torch.cat([mb["is_chosen"] for mb in micro]), paired=micro[0]["paired"])
    if "ref_logps" in micro[0]:
        out["ref_logps"] = torch.cat([mb["ref_logps"] for mb in micro])
    return out
