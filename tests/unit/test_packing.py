"""Padding-free packed batches (aot/batches.py ``pack``, aot/packing.py) against padded ones.

Oracles: the padded batch through plain SDPA (what every run computed before packing), and
transformers' own packed SDPA (position ids that restart, no mask: the library builds a
block-diagonal mask itself), summed per sequence by a loop written here. A gradient test shows
that no token's log-prob depends on another sequence, and that the same test catches a row
attended as one sequence.
"""

import pytest
import torch
from conftest import compose

from aot.batches import PreferenceCollator, merge_micro_batches, pack
from aot.logps import full_logits_sequence_logps, sequence_logps
from aot.packing import KERNEL_CALLS, PACKED, use_packed_attention, why_not_packed

PAIRED = [
    {"prompt_ids": [1, 4, 50, 60, 2, 5], "chosen_ids": [70, 80, 90, 2], "rejected_ids": [99, 2]},
    {"prompt_ids": [1, 4, 51, 2, 5], "chosen_ids": [71, 2], "rejected_ids": [72, 73, 74, 75, 2]},
    {"prompt_ids": [1, 9, 2, 5], "chosen_ids": [3, 3, 3, 3, 3, 3, 2], "rejected_ids": [2]},
]
UNPAIRED = [
    {"prompt_ids": [1, 4, 50, 2, 5], "completion_ids": [70, 80, 2], "label": True},
    {"prompt_ids": [1, 7, 7, 7, 7, 7, 2, 5], "completion_ids": [9, 2], "label": False},
    {"prompt_ids": [1, 2, 5], "completion_ids": [33, 34, 35, 36, 37, 2], "label": False},
]


def random_model(kind: str, seed: int = 0):
    """A random grouped-query Llama or Mistral (4 query heads sharing 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    shape = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="sdpa",
    )
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**shape, sliding_window=4096))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    with torch.no_grad():  # peaked logits, as a trained model's
        model.get_output_embeddings().weight.normal_(0, 0.5)
    return model


def packed_and_padded(features):
    return PreferenceCollator(0, packed=True)(features), PreferenceCollator(0)(features)


def logps_and_grads(model, batch, fn=sequence_logps):
    model.zero_grad()
    logps, counts = fn(model, batch)
    (logps * torch.linspace(-1, 2, len(logps))).sum().backward()  # a row mix-up shows in the grads
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), counts, grads


def assert_close(a, b, atol):
    """Equal within ``atol`` times the larger of 1 and the largest magnitude (float32 sums)."""
    scale = max(1.0, a.abs().max().item())
    assert torch.allclose(a, b, rtol=0, atol=atol * scale), (a - b).abs().max()


# --- the layout ---------------------------------------------------------------------------------------


def test_pack_by_hand():
    batch = pack([([1, 2], [3]), ([4], [5, 6])])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0, 1, 1]]
    assert batch["cu_seq_lens"].tolist() == [0, 3, 6] and batch["cu_seq_lens"].dtype == torch.int32
    assert batch["longest"] == 3


def test_a_sequence_start_is_never_scored_as_in_a_padded_row():
    """With no prompt, the first answer token has nothing of its own sequence to be scored from:
    a padded row drops it (position 0), so packing must not score it from the sequence before."""
    packed = pack([([1, 2], [3]), ([], [5, 6])])
    assert packed["completion_mask"].tolist() == [[0, 0, 1, 0, 1]]
    with pytest.raises(ValueError, match="empty sequence"):
        pack([([1], [2]), ([], [])])


@pytest.mark.parametrize("features", [PAIRED, UNPAIRED], ids=["paired", "unpaired"])
def test_same_sequences_in_the_same_order(features):
    packed, padded = packed_and_padded(features)
    assert torch.equal(packed["is_chosen"], padded["is_chosen"]) and packed["paired"] == padded["paired"]
    bounds = packed["cu_seq_lens"].tolist()
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        n = int(padded["attention_mask"][i].sum())
        assert packed["input_ids"][0, s:e].tolist() == padded["input_ids"][i, :n].tolist()
        assert packed["position_ids"][0, s:e].tolist() == list(range(n))
    assert packed["input_ids"].shape[1] == int(padded["attention_mask"].sum())  # no padding left


# --- log-probs and gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("features", [PAIRED, UNPAIRED], ids=["paired", "unpaired"])
@pytest.mark.parametrize("chunk", [0, 3, 1024])
def test_tiny_packed_equals_padded_and_transformers_packed_sdpa(tiny_path, features, chunk):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    packed, padded = packed_and_padded(features)
    want = logps_and_grads(model, padded, lambda m, b: sequence_logps(m, b, chunk))
    oracle = transformers_packed_logps(model, packed)  # before the switch: transformers' own path
    use_packed_attention(model)
    calls = KERNEL_CALLS["sdpa per sequence"]
    got = logps_and_grads(model, packed, lambda m, b: sequence_logps(m, b, chunk))
    assert KERNEL_CALLS["sdpa per sequence"] > calls  # the packed kernel ran, not plain SDPA
    assert torch.equal(got[1], want[1])  # token counts per sequence
    assert_close(got[0], want[0], 1e-5)
    assert_close(got[0], oracle, 1e-5)
    assert got[2].keys() == want[2].keys() and got[2]
    for name, grad in want[2].items():
        assert_close(got[2][name], grad, 1e-5)


def transformers_packed_logps(model, packed) -> torch.Tensor:
    """transformers' packed SDPA (it detects the restarting position ids and masks blocks), with
    each sequence's completion log-probs summed in a plain loop."""
    with torch.no_grad():
        logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
    logprobs, ids, mask = (
        logits[0].float().log_softmax(-1),
        packed["input_ids"][0],
        packed["completion_mask"][0],
    )
    bounds = packed["cu_seq_lens"].tolist()
    sums = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        sums.append(sum(logprobs[t - 1, ids[t]].item() for t in range(s + 1, e) if mask[t]))
    return torch.tensor(sums)


def test_full_logits_path_packed_equals_padded(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    packed, padded = packed_and_padded(PAIRED)
    want = full_logits_sequence_logps(model, padded)[0]
    use_packed_attention(model)
    assert_close(full_logits_sequence_logps(model, packed)[0], want, 1e-5)


def test_merged_packed_micro_batches_equal_merged_padded(tiny_path):
    """The evaluation of a two-pass batch merges its micro-batches: one packed row of both."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    packed = merge_micro_batches(PreferenceCollator(0, 2, packed=True)(PAIRED)["micro_batches"])
    padded = merge_micro_batches(PreferenceCollator(0, 2)(PAIRED)["micro_batches"])
    assert (
        packed["cu_seq_lens"].tolist()[-1]
        == packed["input_ids"].shape[1]
        == int(padded["attention_mask"].sum())
    )
    assert torch.equal(packed["is_chosen"], padded["is_chosen"])
    with torch.no_grad():
        want = sequence_logps(model, padded)[0]
        use_packed_attention(model)
        assert_close(sequence_logps(model, packed)[0], want, 1e-5)


def test_no_token_sees_another_sequence(tiny_path):
    """The gradient of one sequence's logits with respect to every token embedding is zero
    outside that sequence; the same check on the packed row run as one causal sequence (plain
    SDPA, no boundaries) finds the leak, so it can fail."""
    from transformers import AutoModelForCausalLM

    from aot.logps import model_inputs

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    packed = PreferenceCollator(0, packed=True)(PAIRED)
    s, e = packed["cu_seq_lens"].tolist()[3:5]  # the 4th sequence (the first rejected answer)

    def embedding_grads(inputs: dict) -> torch.Tensor:
        kept = {}
        hook = model.get_input_embeddings().register_forward_hook(
            lambda m, i, out: kept.update(out=out) or out.retain_grad()
        )
        try:
            model(**inputs).logits[0, s:e].sum().backward()
        finally:
            hook.remove()
        return kept["out"].grad[0].abs().sum(-1)  # (T,)

    leak = embedding_grads({"input_ids": packed["input_ids"], "use_cache": False})
    assert leak[:s].sum() > 0  # one causal sequence: the earlier sequences leak in

    use_packed_attention(model)
    grads = embedding_grads(model_inputs(packed))
    assert grads[s:e].sum() > 0
    assert torch.count_nonzero(grads[:s]) == 0 and torch.count_nonzero(grads[e:]) == 0


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_grouped_query_bf16_checkpointed_lora(kind):
    """A random grouped-query Llama and Mistral with LoRA, gradient checkpointing, bf16 autocast:
    packed against padded, log-probs and LoRA gradients. Both run bf16 matmuls: they differ by
    bf16 rounding of different kernels (a bf16 step is 0.4% relative), not by what they compute."""
    from peft import LoraConfig, get_peft_model

    def lora_model():
        model = get_peft_model(
            random_model(kind),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        )
        for name, p in model.named_parameters():  # LoRA B nonzero, so its A gets a gradient too
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()

    packed, padded = packed_and_padded(PAIRED)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = logps_and_grads(lora_model(), padded)
        model = lora_model()
        use_packed_attention(model)
        got = logps_and_grads(model, packed)
    assert torch.equal(got[1], want[1])
    assert (got[0] - want[0]).abs().max() < 0.005 * want[0].abs().max()
    assert got[2].keys() == want[2].keys() and any("lora_A" in k for k in got[2])
    for name, grad in want[2].items():
        assert (got[2][name] - grad).norm() <= 0.03 * grad.norm(), name


# --- which models pack ---------------------------------------------------------------------------------


def test_which_models_pack(tiny_path):
    from transformers import AutoModelForCausalLM

    assert why_not_packed(AutoModelForCausalLM.from_pretrained(tiny_path), 1024) is None
    assert why_not_packed(random_model("mistral"), 1024) is None  # a 4,096-token window covers every row
    short_window = random_model("mistral")
    short_window.config.sliding_window = 512
    assert "sliding window (512 tokens)" in why_not_packed(short_window, 1024)
    assert why_not_packed(short_window, 512) is None


def test_the_run_decides_packing_and_refuses_what_cannot():
    from aot.build import choose_layout
    from aot.config import ConfigError

    short = compose("train.max_length=128", "train.max_prompt_length=32")
    model = random_model("mistral")
    model.config.sliding_window = 64
    layout = choose_layout(short, model)  # auto: padded, and why
    assert not layout["padding_free"] and "sliding window (64 tokens)" in layout["why_padded"]
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="train.padding_free=true.*sliding window"):
        choose_layout(
            compose("train.max_length=128", "train.max_prompt_length=32", "train.padding_free=true"), model
        )
    off = choose_layout(compose("train.padding_free=false"), random_model("llama"))
    assert off == {"padding_free": False, "why_padded": "train.padding_free=false"}
    model = random_model("llama")
    assert choose_layout(short, model) == {"padding_free": True, "why_padded": None}
    assert model.config._attn_implementation == PACKED
