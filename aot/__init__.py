"""AOT: distributional preference alignment of LLMs via optimal transport.

The objective and its diagnostics are plain functions of tensors; training goes through
``train(compose(...))`` or the ``PreferenceTrainer``. The layers, each importing only those
before it (``tests/unit/test_architecture.py``):

    files, distributed, names   where caches live, atomic writes; collectives; the registry of names
    sorting, quantiles          soft sorts; the merged quantile grid
    losses, metrics, methods    the objective and baselines; reward accuracy, FSD violation; methods
    data, batches, logps, packing  rows; tokens and batches (padded or packed); completion log-probs;
                                padding-free attention
    config                      recipes composed and checked (no torch: ``--cfg job`` territory)
    arguments                   TrainingArguments and the loss's options, where a run starts
    fixtures, models            the tiny and SmolLM2 models; loading
    backends, reference         FSDP2 / ZeRO-3 set-up and what ran; the reference and its sharding
    scoring, precompute, diagnostics
    shards, checkpoint, preemption, rundir, trainer
    build, run                  what a run trains with; one training job

Every name below is imported on first use, so ``import aot.config`` (composing and checking a
recipe) loads no torch, and the trainer and the run load transformers and accelerate only when a
run needs them.
"""

from importlib import import_module

#: the public names -> the module that defines each (imported on first use)
_LAZY = {
    "aot_loss": "aot.losses",
    "aot_unpaired_loss": "aot.losses",
    "aot_paired_loss": "aot.losses",
    "dpo_loss": "aot.losses",
    "ipo_loss": "aot.losses",
    "PENALTIES": "aot.losses",
    "SORTS": "aot.losses",
    "METHODS": "aot.methods",
    "soft_sort": "aot.sorting",
    "relative_soft_sort": "aot.sorting",
    "reward_accuracy": "aot.metrics",
    "fsd_violation": "aot.metrics",
    "sequence_logps": "aot.logps",
    "compose": "aot.config",
    "ConfigError": "aot.config",
    "build_training_args": "aot.arguments",
    "PreferenceCollator": "aot.batches",
    "PreferenceTrainer": "aot.trainer",
    "train": "aot.run",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aot' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
