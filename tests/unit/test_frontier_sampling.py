"""The frontier's sampler (evaluation/experiment/sampling.py) on the tiny model: the inverse-CDF
draw against the softmax, the kept log-probs against a teacher-forced forward pass, and the
common random numbers that pair every policy's samples."""

import pytest
import torch

from aot.models import load_for_generation
from evaluation.experiment.sampling import _draw, sample_scored, sequence_logps

PROMPTS = ["Tell me about cats.", "Hi", "What is the capital of France, and why?", "Describe rain."]


def test_inverse_cdf_draw_reproduces_the_softmax():
    """Uniforms on an even grid hit each token as often as its probability (to 1/N)."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, -3.0]])
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    tokens, logps = _draw(logits.expand(n, -1), u)
    counts = torch.bincount(tokens, minlength=5).double() / n
    probs = torch.softmax(logits[0].double(), -1)
    assert torch.allclose(counts, probs, atol=2 / n)
    assert torch.allclose(logps, probs.log()[tokens])


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_for_generation(str(tiny_path))


def test_kept_logps_equal_a_teacher_forced_pass(tiny):
    model, tok = tiny
    samples = sample_scored(model, tok, PROMPTS * 3, max_new_tokens=12, batch=5, seed=1)
    scored = sequence_logps(model, samples, tok.pad_token_id, batch=4)
    assert torch.allclose(samples.logps, scored, atol=1e-4)
    assert samples.logps.max() < 0 and torch.all(samples.lengths >= 1)
    for row, n in zip(samples.tokens, samples.lengths):  # after a sample ends: padding only
        assert torch.all(row[n:] == tok.pad_token_id)


def test_same_seed_same_samples_whatever_the_batch(tiny):
    model, tok = tiny
    one = sample_scored(model, tok, PROMPTS, max_new_tokens=10, batch=1, seed=5)
    all_at_once = sample_scored(model, tok, PROMPTS, max_new_tokens=10, batch=4, seed=5)
    assert torch.equal(one.tokens, all_at_once.tokens) and one.texts == all_at_once.texts
    assert torch.allclose(one.logps, all_at_once.logps, atol=1e-4)
    other = sample_scored(model, tok, PROMPTS, max_new_tokens=10, batch=4, seed=6)
    assert not torch.equal(other.tokens, one.tokens)
