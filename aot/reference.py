"""The reference model: what it is, and how it is placed and sharded.

With LoRA (the default) the reference is the policy with its adapter bypassed: no second copy
in memory. With full fine-tuning (``model.lora=false``) it is a frozen copy, sharded like the
policy once the Trainer has prepared it (``shard_reference``). ``trainer_reference`` gives either
through a prepared trainer, ours or TRL's.
"""

from __future__ import annotations

import contextlib
import copy

from accelerate.utils import DistributedType
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from aot.backends import place_before_sharding


@contextlib.contextmanager
def adapters_disabled(model):
    """Bypass every LoRA layer of ``model`` without touching ``requires_grad``.

    peft's ``disable_adapter()`` also sets ``requires_grad=False`` on the adapter weights for the
    duration. FSDP2 records which parameters are trainable at the model's first forward, so a
    reference pass that comes first (precompute, diagnostics) would leave the adapter marked
    frozen and the next backward fails in bf16. Here only the layers' bypass flag is switched.
    """
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    previous = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, flag in zip(layers, previous):
            m._disable_adapters = flag


@contextlib.contextmanager
def reference_of(policy, ref_model=None, wrapped=None):
    """Yields the reference model: a frozen copy when given, else the LoRA policy with its
    adapter disabled (``wrapped``, if set, is the distributed wrapper to run instead)."""
    if ref_model is not None:
        yield ref_model
        return
    with adapters_disabled(policy):
        yield wrapped if wrapped is not None else policy


def trainer_reference(trainer):
    """The reference of a prepared trainer (ours or TRL's): its prepared frozen copy, or its
    wrapped LoRA policy with the adapter bypassed."""
    wrapped = trainer.model_wrapped
    return reference_of(
        trainer.accelerator.unwrap_model(wrapped), getattr(trainer, "ref_model", None), wrapped
    )


def shard_reference(trainer, reference):
    """The frozen reference copy of full fine-tuning, placed and sharded like the policy, for
    forward passes only (an FSDP2 group set, or a ZeRO-3 inference engine)."""
    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        return _deepspeed_reference(trainer, reference)
    if state.distributed_type == DistributedType.FSDP:
        return _fsdp_reference(trainer, reference)
    return reference.to(trainer.args.device)


def _fsdp_reference(trainer, reference):
    plugin = trainer.accelerator.state.fsdp_plugin
    if plugin.fsdp_version == 2:
        # Sharded as the policy is (groups, mixed precision, rank 0's weights broadcast when the
        # other ranks hold none). A frozen copy runs forward only: every group, the root's
        # (embeddings, final norm, head) included, gives its gathered parameters back after its
        # forward; the defaults keep the tail and root whole for a backward that never comes
        # (about 0.5 GB per GPU at 7B).
        reference = fsdp2_prepare_model(
            trainer.accelerator, place_before_sharding(reference, trainer.args.device)
        )
        for module in reference.modules():
            if isinstance(module, FSDPModule):
                module.set_reshard_after_forward(True, recurse=False)
        return reference
    plugin.set_auto_wrap_policy(reference)
    return FSDP(
        reference,
        sharding_strategy=plugin.sharding_strategy,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        device_id=trainer.args.device if trainer.args.device.type == "cpu" else trainer.accelerator.device,
        use_orig_params=True,
    )


def _deepspeed_reference(trainer, reference):
    import deepspeed  # optional: the deepspeed extra

    config = copy.deepcopy(trainer.accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    config["zero_optimization"] = {"stage": 3 if stage == 3 else 0}
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    config["train_micro_batch_size_per_gpu"] = trainer.args.per_device_train_batch_size
    config["gradient_accumulation_steps"] = 1
    config.pop("train_batch_size", None)
    config["gradient_clipping"] = (
        0.0 if config.get("gradient_clipping") == "auto" else config.get("gradient_clipping", 0.0)
    )
    for key in ("bf16", "fp16"):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = trainer.args.bf16 if key == "bf16" else trainer.args.fp16
    engine, *_ = deepspeed.initialize(model=reference, config=config)
    engine.eval()
    return engine
