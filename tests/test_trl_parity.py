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


def trl_loss(loss_type, chosen, rejected, ref_chosen, ref_rejected, label_smoothing=0.0):
    logps = torch.cat([chosen, rejected])  # TRL's batch is [chosen; rejected]
    rows = logps.numel()
    outputs = SimpleNamespace(
        log_probs=logps[:, None],  # (2N, 1): the one completion token's log-prob
        entropy=torch.zeros(rows, 1),
        mean_logits=torch.zeros(rows, 1),
        is_top1=torch.zeros(rows, 1, dtype=torch.bool),
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
        "input_ids": torch.ones(rows, 2, dtype=torch.long),
        "attention_mask": torch.ones(rows, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * rows),
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


def test_trl_rejects_the_removed_aot_pair_name(logps):
    with pytest.raises(ValueError, match="Unknown loss type"):
        trl_loss("aot_pair", *logps)
