"""Parity with TRL 1.16's own loss code (``DPOTrainer._compute_loss``), run on identical inputs.

TRL computes its losses inline in ``_compute_loss``; we call that method unchanged with a model
whose per-token log-probabilities are the values we choose (one completion token per sequence,
so a sequence's log-prob is that token's) and with precomputed reference log-probs.
"""

from types import SimpleNamespace

import pytest
import torch
from trl import DPOTrainer

from aot.losses import aot_paired_loss, aot_unpaired_loss, dpo_loss, ipo_loss

N = 9
BETA = 0.1


def trl_loss(loss_type, chosen, rejected, ref_chosen, ref_rejected, label_smoothing=0.0, lengths=None):
    """TRL's loss; ``lengths`` (2N,) gives each sequence that many completion tokens (the
    sequence's log-prob spread evenly over them), else one token each."""
    logps = torch.cat([chosen, rejected])  # TRL's batch is [chosen; rejected]
    rows = logps.numel()
    lengths = torch.ones(rows, dtype=torch.long) if lengths is None else lengths
    width = int(lengths.max()) + 1  # one prompt token, then the completion (right-aligned)
    completion_mask = (torch.arange(width)[None, :] >= width - lengths[:, None]).long()
    per_token = completion_mask[:, 1:] * (logps / lengths)[:, None]  # (2N, width - 1), sums to logps
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros(rows, width - 1),
        mean_logits=torch.zeros(rows, width - 1),
        is_top1=torch.zeros(rows, width - 1, dtype=torch.bool),
    )
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t),
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=BETA,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": _Metrics(), "eval": _Metrics()},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.ones(rows, width, dtype=torch.long),
        "attention_mask": torch.ones(rows, width, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, False)


class _Metrics(dict):
    def __missing__(self, key):
        self[key] = []
        return self[key]


@pytest.fixture
def logps():
    g = torch.Generator().manual_seed(0)
    return [-20 * torch.rand(N, generator=g, dtype=torch.float64) for _ in range(4)]


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_aot_unpaired_matches_trl(logps, label_smoothing):
    c, r, rc, rr = logps
    ours = aot_unpaired_loss(c - rc, r - rr, beta=BETA, label_smoothing=label_smoothing)
    theirs = trl_loss("aot_unpaired", c, r, rc, rr, label_smoothing)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.15])
def test_aot_paired_matches_trl(logps, label_smoothing):
    c, r, rc, rr = logps
    ours = aot_paired_loss(c - r, rc - rr, beta=BETA, label_smoothing=label_smoothing)
    theirs = trl_loss("aot", c, r, rc, rr, label_smoothing)
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)


def test_dpo_matches_trl_sigmoid(logps):
    c, r, rc, rr = logps
    assert torch.allclose(dpo_loss(c - r, rc - rr, beta=BETA), trl_loss("sigmoid", c, r, rc, rr), rtol=1e-12)


def test_ipo_matches_trl(logps):
    # One completion token per sequence, so TRL's per-token length normalisation is the identity.
    c, r, rc, rr = logps
    assert torch.allclose(ipo_loss(c - r, rc - rr, beta=BETA), trl_loss("ipo", c, r, rc, rr), rtol=1e-12)


def test_ipo_through_our_trainer_matches_trl_with_completions_of_many_lengths(logps):
    # The trainer's IPO path length-normalises policy and reference log-probs: compare it with
    # TRL on completions of 1 to 12 tokens, so that the normalisation is actually exercised.
    from aot.trainer import preference_loss

    c, r, rc, rr = logps
    lengths = torch.randint(1, 13, (2 * N,), generator=torch.Generator().manual_seed(1))
    assert len(set(lengths.tolist())) > 5
    batch = {"is_chosen": torch.tensor([True] * N + [False] * N), "paired": True}
    ours, _ = preference_loss(
        "ipo",
        torch.cat([c, r]),
        torch.cat([rc, rr]),
        lengths.double(),
        batch,
        {"beta": BETA},
    )
    theirs = trl_loss("ipo", c, r, rc, rr, lengths=lengths)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=0)
    unnormalised = ipo_loss(c - r, rc - rr, beta=BETA)
    assert not torch.allclose(unnormalised, theirs, rtol=1e-3)  # the lengths matter here


def test_trl_rejects_the_removed_aot_pair_name(logps):
    with pytest.raises(ValueError, match="Unknown loss type"):
        trl_loss("aot_pair", *logps)
