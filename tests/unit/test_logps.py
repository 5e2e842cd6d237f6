"""Chunked completion log-probs (aot/logps.py) against the full-vocabulary computation."""

import pytest
import torch
from conftest import SGD, assert_same_weights, compose

from aot.batches import PreferenceCollator
from aot.logps import full_logits_sequence_logps, output_head, sequence_logps

FEATURES = [
    {"prompt_ids": [1, 4, 50, 60, 2, 5], "chosen_ids": [70, 80, 90, 2], "rejected_ids": [99, 2]},
    {"prompt_ids": [1, 4, 51, 2, 5], "chosen_ids": [71, 2], "rejected_ids": [72, 73, 74, 75, 2]},
    {"prompt_ids": [1, 9, 2, 5], "chosen_ids": [3, 3, 3, 3, 3, 3, 2], "rejected_ids": [2]},
]


def random_llama(vocab: int, tie: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a trained model's logits are far from uniform; so make these
        model.get_output_embeddings().weight.normal_(0, 0.5)
    return model


def values_and_grads(model, batch, fn):
    model.zero_grad()
    logps, counts = fn(model, batch)
    # weights that differ per sequence, so that a mix-up of rows would show in the gradient
    (logps * torch.linspace(-1, 2, len(logps))).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), counts, grads


def assert_same(model, batch, chunk, atol=1e-5):
    full = values_and_grads(model, batch, full_logits_sequence_logps)
    chunked = values_and_grads(model, batch, lambda m, b: sequence_logps(m, b, chunk))
    assert torch.equal(full[1], chunked[1])
    # 1e-5 absolute, or relative to the largest value where that exceeds 1 (a float32 sum of
    # log-probs near -160 has a last-bit step of 1.5e-5)
    scale = max(1.0, full[0].abs().max().item())
    assert torch.allclose(full[0], chunked[0], rtol=0, atol=atol * scale), (full[0] - chunked[0]).abs().max()
    assert full[2].keys() == chunked[2].keys() and full[2]
    for name, g in full[2].items():
        scale = max(1.0, g.abs().max().item())
        assert torch.allclose(g, chunked[2][name], rtol=0, atol=atol * scale), (
            name,
            (g - chunked[2][name]).abs().max(),
        )


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_tiny_model_full_fine_tuning(tiny_path, chunk):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    assert output_head(model) is not None
    assert_same(model, PreferenceCollator(pad_token_id=0)(FEATURES), chunk)


def test_tiny_model_lora(tiny_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    assert output_head(model) is base.get_output_embeddings()
    assert_same(model, PreferenceCollator(pad_token_id=0)(FEATURES), chunk=3)


@pytest.mark.parametrize("tie", [True, False])
def test_random_llama_at_smollm2_vocabulary(tie):
    model = random_llama(49_152, tie)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tie
    features = [{k: [t * 997 % 49_152 for t in ids] for k, ids in f.items()} for f in FEATURES]
    assert_same(model, PreferenceCollator(pad_token_id=0)(features), chunk=4)


def test_bf16_autocast_matches_the_full_path_under_autocast():
    model = random_llama(4096, tie=True)
    batch = PreferenceCollator(pad_token_id=0)(FEATURES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = values_and_grads(model, batch, full_logits_sequence_logps)
        chunked = values_and_grads(model, batch, lambda m, b: sequence_logps(m, b, 3))
    # same bf16 matmuls, float32 softmax on both paths: equal up to summation order
    assert torch.allclose(full[0], chunked[0], rtol=0, atol=1e-3)
    for name, g in full[2].items():
        assert torch.allclose(g, chunked[2][name], rtol=0.02, atol=1e-3 * g.abs().max().item()), name


def test_nothing_of_vocabulary_size_is_kept_for_backward():
    """The autograd graph of the chunked path holds no (S, L, V) tensor: every saved tensor is
    at most (positions x hidden), where the full path saves log-softmaxed logits of the
    vocabulary's width at every completion position."""
    model = random_llama(49_152, tie=True)
    batch = PreferenceCollator(pad_token_id=0)(FEATURES)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    for fn, limit in ((lambda m, b: sequence_logps(m, b, 4), 49_152), (full_logits_sequence_logps, None)):
        sizes.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(model, batch)[0].sum()
        parameters = {p.numel() for p in model.parameters()}
        activations = [s for s in sizes if s not in parameters]
        if limit:
            assert max(activations) < limit, max(activations)
        else:
            completion = int(batch["completion_mask"][:, 1:].sum())
            assert max(activations) >= completion * 49_152  # the check can fail: (N, V) log-softmax


def test_a_head_that_is_not_a_plain_linear_takes_the_full_path(tiny_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False))
    assert output_head(model) is None
    batch = PreferenceCollator(pad_token_id=0)(FEATURES)
    with pytest.warns(UserWarning, match="full-vocabulary logits"), torch.no_grad():
        got = sequence_logps(model, batch)[0]
    assert torch.equal(got, full_logits_sequence_logps(model, batch)[0].detach())


def test_a_training_run_gives_the_same_adapter_either_way(tmp_path):
    from aot.run import train

    runs = {}
    for chunk in (0, 7):
        out = f"output_dir={tmp_path / str(chunk)}"
        train(compose("loss=aot_paired", "train.max_steps=3", f"train.logps_chunk={chunk}", out, *SGD))
        runs[chunk] = tmp_path / str(chunk)
    assert_same_weights(runs[0], runs[7])
