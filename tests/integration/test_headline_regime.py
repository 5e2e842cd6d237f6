"""The headline run's regime on 2 CPU processes: the GPU launch configs themselves (bf16 mixed
precision exactly as accelerate builds it from configs/accelerate/fsdp.yaml and
deepspeed_zero3.yaml), bf16 weights, gradient checkpointing, LoRA dropout with the two-pass step
replaying it, and answers long enough that per-row log-prob sums pass 256 nats, where bf16 can no
longer hold them to a nat (its spacing is 2 between 256 and 512).

The runs pack their batches (``train.padding_free=auto``). Oracles: the same bf16 model in one
process, log-probs accumulated in float32, on the same batches (rows split over ranks as the run
splits them), packed as the run is. Values are compared to 0.01 nats: rounding a sum to bf16
moves it by up to 1 nat (0.5 on average), 50 times more. Packed against padded in bf16 (the
oracle both ways) differs by how bf16 kernels round, not by what they compute: within
``BF16_KERNELS`` (cross-sequence attention or wrong positions move sums by tens of nats).
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SGD, compose, weights

pytestmark = pytest.mark.slow
TOL = 0.01  # nats; see the module docstring
BF16_KERNELS = 0.25  # nats: packed against padded SDPA in bf16 (seen: 0.07 on this CPU)
LONG = ["train.max_length=256", "train.max_prompt_length=32", "train.per_device_eval_batch_size=8"]
HEADLINE = [  # what the 7B recipes set (recipes/train.yaml, recipes/model/merlinite.yaml)
    "model.dtype=bfloat16",
    "train.gradient_checkpointing=true",
    *SGD,
    "train.max_steps=2",
    "train.logging_steps=1",
    "train.per_device_train_batch_size=4",
    "data.max_test_samples=32",
]


#: The long-answer view of the bundled set (scripts/make_sample_data.py): sums of -350 to -550 nats.
LONG_DATA = ["data=sample", "data.view=long"]
#: Processes per launch: 2 CPU processes here; benchmarks/gpu_check.sh runs this module on one GPU.
PROCESSES = int(os.environ.get("AOT_TEST_PROCESSES", "2"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: one process training what the launch's processes train together (4 rows each)
ONE_PROCESS_BATCH = f"train.per_device_train_batch_size={4 * PROCESSES}"


def launch(config: str, tmp_path, cases: dict, cache) -> str:
    """One `accelerate launch` of the GPU config on 2 CPU processes, running ``cases`` in order."""
    cmd = [  # through this interpreter: an environment need not have the `accelerate` script
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(REPO, "configs", "accelerate", f"{config}.yaml"),
        "--num_processes",
        str(PROCESSES),
        "tests/helpers/sharded_cases.py",
        *(json.dumps([f"output_dir={tmp_path / name}", *args]) for name, args in cases.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AOT_SHARD_ON_CPU": "1", "AOT_CACHE_DIR": str(cache)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout + proc.stderr


@pytest.fixture
def cache(tmp_path, tiny_path):
    root = tmp_path / "cache"
    root.mkdir()
    (root / tiny_path.name).symlink_to(tiny_path)
    return root


class Oracle:
    """The run's bf16 model in one process: per-row log-probs accumulated in float32."""

    def __init__(self, overrides, autocast: bool, packed: bool = True):

        from aot.batches import PreferenceCollator, tokenize_split
        from aot.data import load_split
        from aot.models import load_tokenizer, model_path

        self.overrides, self.cfg = overrides, compose(*overrides)
        t = self.cfg.train
        self.path = model_path(self.cfg)
        self.tokenizer = load_tokenizer(self.cfg, self.path)
        self.features = {
            which: tokenize_split(
                load_split(self.cfg.data, which), self.tokenizer, t.max_length, t.max_prompt_length
            )[0]
            for which in ("train", "test")
        }
        self.collator = PreferenceCollator(self.tokenizer.pad_token_id, packed=packed)
        self.base = self.load()
        self.autocast = autocast

    def load(self):
        from transformers import AutoModelForCausalLM

        from aot.packing import use_packed_attention

        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.bfloat16)
        if self.collator.packed:
            use_packed_attention(model)
        return model

    def rows(self, which: str, model=None, world: int = PROCESSES) -> torch.Tensor:
        """(N, 2) [chosen, rejected], batched exactly as the run splits rows over ``world`` ranks."""
        from aot.logps import sequence_logps

        features, bs = self.features[which], self.cfg.train.per_device_eval_batch_size
        per_rank = math.ceil(len(features) / world / bs) * bs
        padded = features + [features[0]] * (per_rank * world - len(features))
        out = []
        model = (model or self.base).to(DEVICE).eval()
        for start in range(0, len(padded), bs):
            batch = {
                k: v.to(DEVICE) if torch.is_tensor(v) else v
                for k, v in self.collator.collate(padded[start : start + bs]).items()
            }
            with torch.no_grad(), torch.autocast(DEVICE, torch.bfloat16, enabled=self.autocast):
                lp, _ = sequence_logps(model, batch)
            out.append(lp.float().cpu().reshape(2, -1).T)
        return torch.cat(out)[: len(features)].double()

    def with_adapter(self, run_dir):
        from peft import PeftModel

        return PeftModel.from_pretrained(self.load(), run_dir)


def before_rows(run_dir) -> tuple[torch.Tensor, torch.Tensor]:
    saved = torch.load(run_dir / "eval_before.pt")
    stack = lambda d: torch.stack([d["chosen"], d["rejected"]], 1)  # noqa: E731
    return stack(saved["policy"]), stack(saved["reference"])


def losses(m):
    return [h["loss"] for h in m["log_history"] if "loss" in h]


def test_fsdp2_bf16_headline_regime_values_and_adapter(tmp_path, cache, tiny_path):
    values = [*LONG_DATA, *LONG, *HEADLINE, "loss=aot_paired", "model.lora_dropout=0.1"]
    values += ["train.precompute_ref=true", "loss.ot_batch_size=8"]  # two micro-batches of 4
    adapter = [*LONG_DATA, *LONG, *HEADLINE, "loss=aot_unpaired", "model.lora_dropout=0.0"]
    log = launch("fsdp", tmp_path, {"values": values, "adapter": adapter}, cache)
    assert f"distributed: FSDP2 (fully_shard), {PROCESSES} process" in log
    m = json.loads((tmp_path / "values" / "metrics.json").read_text())
    assert m["layout"]["padding_free"] is True and sum(m["layout"]["packed_attention_calls"].values()) > 0
    d = m["distributed"]
    assert d["mixed_precision"] == "bf16" and d["activation_checkpointing"] is True
    assert d["precision"] == {"fsdp2_param": "bfloat16", "fsdp2_reduce": "float32", "fsdp2_output": None}

    oracle = Oracle([*LONG_DATA, *LONG, *HEADLINE], autocast=True)
    ref_test = oracle.rows("test")
    assert (ref_test.abs() > 256).all()  # the regime where bf16 sums are off by a nat
    policy, reference = before_rows(tmp_path / "values")
    assert (policy - ref_test).abs().max() < TOL and (reference - ref_test).abs().max() < TOL
    (cached,) = (cache / "ref_logps").glob("*.pt")  # the precomputed reference of the train rows
    assert (torch.load(cached).double() - oracle.rows("train")).abs().max() < TOL
    # Step 1: the policy is its reference (LoRA B = 0), so AOT paired is log 2 (0.6914 in bf16).
    assert losses(m)[0] == pytest.approx(math.log(2), abs=1e-4)
    # Dropout 0.1 + checkpointing: pass 2 recomputed pass 1. A dropout mask drawn anew moves sums
    # of -400 nats by nats; float32 reordering of the same masks, by 1e-6 of the sum (CUDA
    # kernels: 3e-4 nats, seen on an H200; this CPU: 0).
    replay = [h["two_pass/replay_error"] for h in m["log_history"] if "two_pass/replay_error" in h]
    assert replay and max(replay) < 2e-6 * ref_test.abs().max().item()
    # Diagnostics after training: the saved adapter through the oracle gives the same rewards.
    after = oracle.rows("test", oracle.with_adapter(tmp_path / "values"))
    rewards = (after - ref_test)[:, 0]
    got = m["eval_after"]["chosen_reward_quantiles"]
    want = torch.quantile(rewards, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    assert [got["q05"], got["q50"], got["q95"]] == pytest.approx(want.tolist(), abs=TOL)
    assert rewards.abs().max() > 10 * TOL  # training moved the rewards: the comparison means something

    # The adapter against one process in the same precision (autocast bf16, P x 4 rows as 4P).
    one = tmp_path / "one"
    from aot.run import train

    train(compose(f"output_dir={one}", *adapter, "train.bf16=true", ONE_PROCESS_BATCH))
    assert_close_adapters(tmp_path / "adapter", one)
    assert_packed_near_padded(oracle, ref_test)


def assert_packed_near_padded(oracle, packed_rows):
    padded = Oracle(oracle.overrides, oracle.autocast, packed=False).rows("test")
    assert (padded - packed_rows).abs().max() < BF16_KERNELS


def assert_close_adapters(a, b, rel=0.02):
    """Equal within 2% of the largest update. The two sides differ only in how bf16 rounds: 2 x 4
    rows per rank against 8 rows together, RMSNorm weights gathered in bf16 (FSDP2)
    or promoted to float32 (autocast). A bf16 step is 2^-8 = 0.4% relative, and an update is
    lr x gradient, so gradient differences of a few bf16 steps move it by about 1%."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    moved = max((wb[k].float().abs().max().item() for k in wb if "lora_B" in k))
    assert moved > 1e-3
    for k in wa:
        diff = (wa[k].float() - wb[k].float()).abs().max().item()
        assert diff <= rel * moved, (k, diff, moved)


def test_zero3_bf16_headline_regime_values_and_adapter(tmp_path, cache, tiny_path):
    pytest.importorskip("deepspeed")
    values = [*LONG_DATA, *LONG, *HEADLINE, "loss=dpo", "model.lora_dropout=0.1", "train.precompute_ref=true"]
    adapter = [*LONG_DATA, *LONG, *HEADLINE, "loss=aot_unpaired", "model.lora_dropout=0.0"]
    # train.bf16 stays auto: it follows the launch config's mixed_precision (DeepSpeed refuses a mismatch)
    log = launch("deepspeed_zero3", tmp_path, {"values": values, "adapter": adapter}, cache)
    assert f"distributed: DeepSpeed ZeRO-3, {PROCESSES} process" in log
    m = json.loads((tmp_path / "values" / "metrics.json").read_text())
    d = m["distributed"]
    assert d["precision"] == {"deepspeed_bf16": True} and d["activation_checkpointing"] is True

    oracle = Oracle([*LONG_DATA, *LONG, *HEADLINE], autocast=False)  # DeepSpeed casts the model itself
    ref_test = oracle.rows("test")
    assert (ref_test.abs() > 256).all()
    policy, reference = before_rows(tmp_path / "values")
    assert (policy - ref_test).abs().max() < TOL and (reference - ref_test).abs().max() < TOL
    (cached,) = (cache / "ref_logps").glob("*.pt")
    assert (torch.load(cached).double() - oracle.rows("train")).abs().max() < TOL
    # Step 1: policy == reference, so DPO is log 2; a bf16-cast precomputed reference gave 0.68.
    assert losses(m)[0] == pytest.approx(math.log(2), abs=1e-4)

    one = tmp_path / "one"
    from aot.run import train

    train(compose(f"output_dir={one}", *adapter, "train.bf16=true", ONE_PROCESS_BATCH))
    assert_close_adapters(tmp_path / "adapter", one)
    assert_packed_near_padded(oracle, ref_test)
