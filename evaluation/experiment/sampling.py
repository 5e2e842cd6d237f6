"""Sampling with common random numbers, and the log-probs a KL estimate needs (the frontier's).

``sample_scored`` draws one completion per prompt at temperature 1 (the full softmax, as the
experiment's ``sample``) in batches with a key/value cache, by inverse-CDF sampling from
uniforms fixed in advance: sample ``i`` reads row ``i`` of one (N, max_new_tokens) uniform
matrix drawn from ``seed``. Every policy therefore sees the same random numbers for the same
prompt and sample index, whatever the batch size: two equal policies draw equal samples and
two close ones mostly equal samples, so differences between policies are paired. The policy's
log-prob of each drawn token is kept as it is drawn (no second forward pass for the KL).

``sequence_logps`` scores those same token ids under another model (the reference): the KL
estimate is then the mean of ``policy - reference`` summed over each sample's tokens (nats per
sequence), on the tokens that were sampled rather than on re-tokenised text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Samples:
    """``texts`` (N,), the generated ``tokens`` (N, T) padded after each sample's end with
    ``pad``, ``lengths`` (N,) counting the end-of-turn token, and the sampling policy's
    ``logps`` (N,) of those tokens, summed; ``prompt_ids``/``prompt_mask`` as fed (left-padded)."""

    texts: list[str]
    tokens: torch.Tensor
    lengths: torch.Tensor
    logps: torch.Tensor
    prompt_ids: list[list[int]]


def chat_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Each prompt as a user turn in the tokenizer's chat template, ready for the assistant."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _stop_ids(model, tokenizer) -> torch.Tensor:
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return torch.tensor(sorted(set(eos) | {tokenizer.eos_token_id}), dtype=torch.long)


def _draw(logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF draw from softmax(logits) (B, V) at uniforms u (B,): tokens (B,), log-probs (B,)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    cdf = logp.exp().cumsum(-1)
    token = torch.searchsorted(cdf, (u.double() * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    token = token.clamp(max=logits.shape[-1] - 1)
    return token, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def sample_scored(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int, seed: int
) -> Samples:
    """One completion per prompt (temperature 1, no top-k/top-p) and its summed log-prob under
    ``model``; sample i reads uniforms row i of the matrix drawn from ``seed`` (see the module).
    The model runs on its own device; the samples come back on the CPU."""
    dev = model.device
    uniforms = torch.rand(len(prompts), max_new_tokens, generator=torch.Generator().manual_seed(seed))
    stop, pad = _stop_ids(model, tokenizer), tokenizer.pad_token_id
    prompt_ids = chat_prompt_ids(tokenizer, prompts)
    tokens = torch.full((len(prompts), max_new_tokens), pad, dtype=torch.long)
    lengths = torch.zeros(len(prompts), dtype=torch.long)
    logps = torch.zeros(len(prompts), dtype=torch.float64)
    for start in range(0, len(prompts), batch):
        rows = slice(start, start + batch)
        ids, mask = (x.to(dev) for x in _left_padded(prompt_ids[rows], pad))
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for t in range(max_new_tokens):
            token, logp = (x.cpu() for x in _draw(out.logits[:, -1], uniforms[rows, t].to(dev)))
            live = ~done
            tokens[rows][live, t] = token[live]  # a view: writes into tokens
            logps[rows] += torch.where(live, logp, 0.0)
            lengths[rows] += live.long()
            done |= torch.isin(token, stop)
            if done.all() or t == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = model(
                input_ids=torch.where(done, pad, token).unsqueeze(-1).to(dev), attention_mask=mask, position_ids=positions,
                cache=out.cache, use_cache=True,
            )  # fmt: skip
    texts = [
        tokenizer.decode(tokens[i, : lengths[i]], skip_special_tokens=True).strip()
        for i in range(len(prompts))
    ]
    return Samples(texts, tokens, lengths, logps, prompt_ids)


@torch.no_grad()
def sequence_logps(model, samples: Samples, pad: int, batch: int) -> torch.Tensor:
    """Summed log-probs (N,) of each sample's generated tokens after its prompt, under ``model``
    (run on its own device; the result on the CPU)."""
    dev = model.device
    out = torch.zeros(len(samples.texts), dtype=torch.float64)
    head, body = model.get_output_embeddings(), model.get_decoder()
    for start in range(0, len(samples.texts), batch):
        rows = slice(start, start + batch)
        ids, mask = _left_padded(samples.prompt_ids[rows], pad)
        gen, lengths = samples.tokens[rows], samples.lengths[rows]
        gen_mask = (torch.arange(gen.shape[1]) < lengths.unsqueeze(-1)).long()
        full, full_mask = torch.cat([ids, gen], 1), torch.cat([mask, gen_mask], 1)
        full, full_mask, gen, gen_mask = (x.to(dev) for x in (full, full_mask, gen, gen_mask))
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = body(input_ids=full, attention_mask=full_mask, position_ids=positions, use_cache=False)
        # the generated token at prompt width + t is predicted at the position before it
        states = hidden.last_hidden_state[:, ids.shape[1] - 1 : -1]  # (B, T, H)
        logits = head(states)  # (B, T, V) float32; only each drawn token's log-prob is kept, in float64
        logp = logits.gather(-1, gen.unsqueeze(-1)).squeeze(-1).double() - logits.logsumexp(-1).double()
        out[rows] = (logp * gen_mask).sum(-1).cpu()
    return out
