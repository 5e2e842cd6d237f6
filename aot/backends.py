"""The distributed backend a run uses, set up as its launch config asks and recorded as it ran.

accelerate and the Trainer never pick FSDP or DeepSpeed for CPU processes by themselves: an FSDP
launch config on a machine without GPUs runs plain data parallel (full copies) and a ZeRO-3 one
may run unsharded, without a word. So:

- ``check_launch`` refuses an FSDP/DeepSpeed launch on a machine without CUDA unless it asks for
  CPU sharding (``AOT_SHARD_ON_CPU=1``, which ``make train ACCEL=fsdp_cpu|deepspeed_zero3_cpu``
  sets), naming what would have run instead;
- ``steer_cpu_sharding`` is the one place where accelerate is steered onto real sharding on the
  CPU; ``set_fsdp2_precision`` the one place where FSDP2's mixed precision is set, and
  ``place_before_sharding`` where a model goes to its GPU before sharding;
- ``one_device_per_process``: a process without a launcher never wraps ``nn.DataParallel``;
- ``describe`` states what actually ran, e.g.
  ``distributed: FSDP2 (fully_shard), 2 processes on cpu, 50% of parameters per rank``.
"""

from __future__ import annotations

import logging
import os
import resource

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.fsdp import MixedPrecisionPolicy

from aot.distributed import all_gather_objects

log = logging.getLogger("aot")
SHARD_ON_CPU = "AOT_SHARD_ON_CPU"


class LaunchError(RuntimeError):
    """A launch that would silently run something other than what its config asks for."""


def requested_backend() -> str | None:
    """'fsdp' or 'deepspeed' when accelerate's launcher was given such a config, else None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    return None


def shard_on_cpu() -> bool:
    return (
        requested_backend() is not None
        and not torch.cuda.is_available()
        and os.environ.get(SHARD_ON_CPU) == "1"
    )


def check_launch() -> None:
    """Refuse a launch that would silently fall back; call before anything is set up."""
    backend = requested_backend()
    if backend is None or torch.cuda.is_available():
        return
    if os.environ.get(SHARD_ON_CPU) == "1":
        if backend == "deepspeed":  # before DeepSpeed is first imported: it picks its accelerator then
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        return
    name = {"fsdp": "FSDP", "deepspeed": "DeepSpeed ZeRO"}[backend]
    cpu_config = {"fsdp": "fsdp_cpu", "deepspeed": "deepspeed_zero3_cpu"}[backend]
    raise LaunchError(
        f"the launch config asks for {name}, but this machine has no CUDA device: accelerate would "
        f"silently run plain data parallel on the CPU (a full, unsharded copy per process) instead. "
        f"To shard on the CPU for real use configs/accelerate/{cpu_config}.yaml "
        f"(make train ACCEL={cpu_config} NPROC=2, which sets {SHARD_ON_CPU}=1); "
        f"on a GPU machine check that torch sees the GPUs (torch.cuda.is_available())."
    )


def steer_cpu_sharding(args) -> None:
    """Make accelerate run the requested FSDP/ZeRO-3 on CPU processes (no-op elsewhere).

    Call after ``TrainingArguments`` exist (they create the process group) and before the
    Trainer. FSDP: accelerate keys FSDP on the *GPU* distributed types only, so the state is
    created here with the FSDP plugin and its type set to FSDP; the Trainer's Accelerator then
    reuses this state. DeepSpeed: accelerate already selects it for CPU processes once DeepSpeed
    uses its CPU accelerator (``DS_ACCELERATOR=cpu``, gloo); its shared-memory all-reduce op,
    used only for inference, is turned off so that init does not spend minutes compiling it.
    """
    if not shard_on_cpu():
        return
    if requested_backend() == "deepspeed":
        import deepspeed.ops  # optional: the deepspeed extra

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        return
    if PartialState().distributed_type == DistributedType.FSDP:
        return  # already steered (several runs in one process)
    assert PartialState().distributed_type == DistributedType.MULTI_CPU, PartialState().distributed_type
    # A first Accelerator initialises the shared state (the Trainer passes the same mixed
    # precision to its own Accelerator, which then reuses this state as it is).
    state = Accelerator(mixed_precision=args.mixed_precision).state
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* variables
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def set_fsdp2_precision(trainer) -> None:
    """FSDP2 bf16 as this trainer needs it: parameters gathered and computed in bf16, gradients
    reduce-scattered in float32, module outputs left in the dtype they were computed in.

    accelerate builds ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16,
    output_dtype=bf16)`` and gives ``[final norm, lm_head]`` a ``fully_shard`` group of its own.
    FSDP2 casts every group's floating outputs to ``output_dtype``: the head returns the per-row
    log-prob sums in float32 (``aot.logps``), and a bf16 cast rounds a sum of -300.7 to -300.0
    (steps of 2 nats between 256 and 512). ``output_dtype=None`` keeps them; bf16 layers still
    return bf16. Gradients of float32 master weights are reduced in float32. No-op unless the
    trainer runs FSDP2 with mixed precision; call before the model is prepared (before ``train``).
    """
    state = trainer.accelerator.state
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is None or plugin.fsdp_version != 2 or state.mixed_precision == "no":
        return
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}[state.mixed_precision]
    plugin.mixed_precision_policy = MixedPrecisionPolicy(
        param_dtype=compute, reduce_dtype=torch.float32, output_dtype=None
    )


def place_before_sharding(model, device):
    """Under FSDP on a GPU, ``model`` moved to its GPU before accelerate shards it.

    accelerate upcasts the trainable weights to float32 where the model is before sharding: in
    host memory that is a float32 copy per rank (29 GB for a 7B model fully fine-tuned, 8 of them
    per node). On the GPU the copy is transient and the host keeps only the page cache of the
    checkpoint files. Left where it is when it and its upcast would not fit in 80% of the GPU's
    free memory."""
    if requested_backend() != "fsdp" or getattr(device, "type", "cpu") != "cuda":
        return model
    need = sum(
        p.numel() * (p.element_size() + (4 if p.requires_grad and p.dtype != torch.float32 else 0))
        for p in model.parameters()
    )
    if need < 0.8 * torch.cuda.mem_get_info(device)[0]:
        model.to(device)
    return model


def one_device_per_process(args) -> None:
    """A process without a distributed launcher trains on one GPU, never through ``nn.DataParallel``.

    transformers sets ``n_gpu = torch.cuda.device_count()`` for such a process and wraps the model
    in ``DataParallel``; its replicas would each call the output head on a slice of the rows while
    ``aot.logps`` expects the whole batch. Several GPUs are used through a launcher instead.
    """
    if args.n_gpu > 1:
        log.warning(
            "one process uses one GPU (cuda:0) of the %d it sees; to use all of them launch through "
            "accelerate: make train ... ACCEL=ddp|fsdp|deepspeed_zero3 NPROC=%d",
            args.n_gpu,
            args.n_gpu,
        )
        args._n_gpu = 1


# --- what ran ------------------------------------------------------------------------------------


def _local_and_total(param) -> tuple[int, int]:
    if hasattr(param, "ds_numel"):  # DeepSpeed ZeRO-3: this rank's partition of the full tensor
        return param.ds_tensor.numel(), param.ds_numel
    if hasattr(param, "to_local"):  # FSDP2: a DTensor sharded on dim 0
        return param.to_local().numel(), param.numel()
    return param.numel(), param.numel()


def backend_name(trainer) -> str:
    state = trainer.accelerator.state
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        return (
            "FSDP2 (fully_shard)"
            if state.fsdp_plugin.fsdp_version == 2
            else "FSDP1 (FullyShardedDataParallel)"
        )
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    if state.num_processes > 1:
        return "DDP (full copy per process)"
    return "single process"


def precision(trainer) -> dict:
    """The precision that ran: DeepSpeed's bf16 switch (it casts the whole model), or FSDP2's
    mixed-precision policy (dtypes of the gathered parameters, the gradient reduction and module
    outputs; ``None`` = unchanged), or the autocast accelerate applies."""
    state = trainer.accelerator.state
    if state.distributed_type == DistributedType.DEEPSPEED:
        bf16 = state.deepspeed_plugin.deepspeed_config.get("bf16", {}).get("enabled") is True
        return {"deepspeed_bf16": bf16}
    policy = getattr(getattr(state, "fsdp_plugin", None), "mixed_precision_policy", None)
    if policy is not None and state.fsdp_plugin.fsdp_version == 2:
        name = lambda d: None if d is None else str(d).removeprefix("torch.")  # noqa: E731
        return {
            "fsdp2_param": name(policy.param_dtype),
            "fsdp2_reduce": name(policy.reduce_dtype),
            "fsdp2_output": name(policy.output_dtype),
        }
    return {"autocast": state.mixed_precision}


def describe(trainer, total_params: int) -> dict:
    """What actually ran, after the Trainer prepared the model: backend, processes, share of the
    policy's parameters held by this rank (``total_params`` is counted before preparation)."""
    # FSDP1 with use_orig_params exposes views of the local shard: their numel is already local.
    local = sum(_local_and_total(p)[0] for p in trainer.model_wrapped.parameters())
    state = trainer.accelerator.state
    info = {
        "backend": backend_name(trainer),
        "processes": state.num_processes,
        "device": str(trainer.args.device),
        "mixed_precision": state.mixed_precision,
        "precision": precision(trainer),
        "activation_checkpointing": bool(
            getattr(trainer.accelerator.unwrap_model(trainer.model), "is_activation_checkpointing", False)
        ),
        "params_per_rank": local / max(total_params, 1),
        # Host memory so far (loading included), per rank: every rank a full copy, or rank 0 only?
        "peak_host_rss_gb_per_rank": all_gather_objects(round(peak_rss_bytes() / 1e9, 3)),
    }
    info["line"] = (
        f"distributed: {info['backend']}, {info['processes']} process{'es' if info['processes'] > 1 else ''} "
        f"on {info['device'].split(':')[0]}, {100 * info['params_per_rank']:.0f}% of parameters per rank"
    )
    return info


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def share_per_rank(model) -> float:
    """The share of ``model``'s parameters this rank holds now (1.0 unsharded, 0.5 halved over 2)."""
    local, total = map(sum, zip(*(_local_and_total(p) for p in model.parameters())))
    return local / max(total, 1)


def parameter_count(model) -> int:
    """All parameters of a model, counted in full even when ZeRO-3 already partitioned them."""
    return sum(_local_and_total(p)[1] for p in model.parameters())
