"""The embedded tiny model: built offline from the bundled sample data, cached on disk.

    python -m aot.tiny            # build (or find) it and print its directory

A small Llama-architecture causal LM and a byte-level BPE tokenizer with a chat template,
trained from the sample data's texts; then a short SFT warm-up on both chosen and rejected
answers, so the reference policy is fluent but has no preference of its own (alignment has to
teach that). Saved with ``save_pretrained``: every recipe, this one included, loads its model
with ``from_pretrained`` on a hub id or a directory.

The cache key hashes this file and the sample data, so editing either rebuilds the model.
Cache directory: ``$AOT_CACHE_DIR`` or ``<repo>/.cache``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import torch

from aot.data import SAMPLE_DIR, read_file

SEED = 0
VOCAB = 512
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
SFT_STEPS, SFT_BATCH, SFT_LR = 300, 32, 3e-3


def cache_dir() -> Path:
    return Path(os.environ.get("AOT_CACHE_DIR", Path(__file__).resolve().parents[1] / ".cache"))


def _key() -> str:
    h = hashlib.sha1(Path(__file__).read_bytes())
    for p in sorted(SAMPLE_DIR.glob("paired_train.jsonl")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _conversations() -> list[list[dict]]:
    rows = read_file(SAMPLE_DIR / "paired_train.jsonl")
    convs = []
    for r in rows:
        for answer in (r["chosen"], r["rejected"]):
            convs.append([{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": answer}])
    return convs


def _tokenizer(convs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator((m["content"] for c in convs for m in c), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def _model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def _sft(model, tokenizer, convs) -> float:
    """Short supervised warm-up on answer tokens; returns the last batch's loss."""
    rng = random.Random(SEED)
    examples = []
    for c in convs:
        prompt = tokenizer.apply_chat_template(c[:1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(c, tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        examples.append((ids, len(p_ids)))
    opt = torch.optim.AdamW(model.parameters(), lr=SFT_LR)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(SFT_STEPS):
        batch = rng.sample(examples, SFT_BATCH)
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((SFT_BATCH, width), tokenizer.pad_token_id)
        labels = torch.full((SFT_BATCH, width), -100)
        mask = torch.zeros(SFT_BATCH, width, dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            mask[i, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = SFT_LR * min(1.0, (SFT_STEPS - step) / (0.3 * SFT_STEPS))  # linear decay at the end
        opt.step()
        opt.zero_grad()
    model.eval()
    return loss.item()


def build_tiny(force: bool = False) -> Path:
    """Return the directory of the tiny model, building it first if needed (about 20 s on 2 CPUs)."""
    out = cache_dir() / f"tiny-{_key()}"
    if (out / "build.json").is_file() and not force:
        return out
    torch.manual_seed(SEED)
    convs = _conversations()
    tokenizer = _tokenizer(convs)
    model = _model(tokenizer)
    final_loss = _sft(model, tokenizer, convs)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "sft_steps": SFT_STEPS,
        "sft_final_loss": final_loss,
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: a half-built model is never picked up
    return out


if __name__ == "__main__":
    print(build_tiny())
