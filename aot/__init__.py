"""AOT: distributional preference alignment of LLMs via optimal transport.

The objective and its diagnostics are plain functions of tensors; training goes through
``train(compose(...))`` or the ``PreferenceTrainer``. The layers, each importing only those
before it (``tests/unit/test_architecture.py``):

    files, distributed          where caches live, atomic writes; collectives
    sorting, quantiles          soft sorts; the merged quantile grid
    losses, metrics, methods    the objective and baselines; reward accuracy, FSD violation; names
    data, batches, logps        rows; tokens and batches; completion log-probs
    config                      recipes composed and checked; TrainingArguments
    fixtures, models            the tiny and SmolLM2 models; loading
    backends, reference         FSDP2 / ZeRO-3 set-up and what ran; the reference and its sharding
    scoring, precompute, diagnostics
    shards, checkpoint, preemption, rundir, trainer
    build, run                  what a run trains with; one training job

The trainer and the run load transformers, TRL and accelerate: they are imported on first use.
"""

from importlib import import_module

from aot.logps import sequence_logps
from aot.losses import PENALTIES, SORTS, aot_loss, aot_paired_loss, aot_unpaired_loss, dpo_loss, ipo_loss
from aot.methods import METHODS
from aot.metrics import fsd_violation, reward_accuracy
from aot.sorting import relative_soft_sort, soft_sort

#: names served from the heavier modules, imported on first use
_LAZY = {
    "compose": "aot.config",
    "build_training_args": "aot.config",
    "ConfigError": "aot.config",
    "PreferenceCollator": "aot.batches",
    "PreferenceTrainer": "aot.trainer",
    "train": "aot.run",
}

__all__ = [
    "aot_loss",
    "aot_unpaired_loss",
    "aot_paired_loss",
    "dpo_loss",
    "ipo_loss",
    "PENALTIES",
    "SORTS",
    "METHODS",
    "soft_sort",
    "relative_soft_sort",
    "reward_accuracy",
    "fsd_violation",
    "sequence_logps",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aot' has no attribute {name!r}")
