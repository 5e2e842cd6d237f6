"""Every recipe combination composes and builds its trainer config without loading anything;
names and errors stay in step with the registry."""

import itertools
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import RECIPES, REPO, compose

from aot.arguments import build_training_args, loss_kwargs
from aot.config import ConfigError
from aot.methods import METHODS
from aot.names import PAIRED_ONLY


def group(name):
    return sorted(f[:-5] for f in os.listdir(os.path.join(RECIPES, name)) if f.endswith(".yaml"))


MODELS, LOSS_NAMES, DATA = group("model"), group("loss"), group("data")


def test_groups_match_the_registry_and_the_issue():
    assert set(LOSS_NAMES) == set(METHODS)
    assert set(MODELS) == {"merlinite", "openhermes", "starling", "llama3", "mistral", "tiny", "smollm2"}
    assert set(DATA) == {"ultrafeedback", "helpsteer", "pku", "sample", "local"}


@pytest.mark.parametrize("model", MODELS)
def test_every_combination_builds_its_trainer_config(model, tmp_path):
    for loss, data in itertools.product(LOSS_NAMES, DATA):
        cfg = compose(f"model={model}", f"loss={loss}", f"data={data}")
        assert cfg.model.id == model and cfg.loss.name == loss and cfg.data.name == data
        assert cfg.output_dir == f"outputs/{model}-{loss}-{data}"
        if loss in PAIRED_ONLY and data in ("helpsteer", "pku"):
            with pytest.raises(ConfigError, match="needs paired rows"):
                build_training_args(cfg, str(tmp_path))
            continue
        args = build_training_args(cfg, str(tmp_path))
        assert args.per_device_train_batch_size == cfg.train.per_device_train_batch_size
        assert args.learning_rate == cfg.train.learning_rate
        if loss == "kto":
            assert args.beta == cfg.loss.beta
        else:
            kw = loss_kwargs(cfg)
            assert kw["beta"] == cfg.loss.beta and "name" not in kw


def test_real_recipes_name_real_hub_ids():
    ids = {m: compose(f"model={m}").model.name_or_path for m in MODELS}
    assert ids["merlinite"] == "ibm/merlinite-7b"
    assert ids["llama3"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert compose("data=ultrafeedback").data.hub_id == "HuggingFaceH4/ultrafeedback_binarized"
    assert compose("loss=aot_unpaired").loss.beta == 0.01  # the paper's beta


def test_documented_overrides_compose():
    cfg = compose(
        "model=tiny",
        "loss=aot_paired",
        "data=local",
        "output_dir=/tmp/x",
        "seed=3",
        "train.max_steps=7",
        "train.per_device_train_batch_size=4",
        "train.learning_rate=0.01",
        "train.save_steps=2",
        "loss.beta=0.05",
        "loss.penalty=hinge",
        "loss.sort=soft",
        "data.train_path=a.jsonl",
        "data.test_path=b.jsonl",
    )
    assert (cfg.seed, cfg.train.max_steps, cfg.loss.penalty, cfg.loss.sort, cfg.data.train_path) == (
        3,
        7,
        "hinge",
        "soft",
        "a.jsonl",
    )
    assert loss_kwargs(cfg) == dict(
        beta=0.05, penalty="hinge", sort="soft", sort_strength=None, label_smoothing=0.0, gather=True
    )
    assert loss_kwargs(compose("loss=aot_unpaired", "loss.ot_batch=local"))["gather"] is False
    assert "gather" not in loss_kwargs(compose("loss=dpo"))


def test_aot_with_a_per_device_batch_of_one_is_refused(tmp_path):
    cfg = compose("loss=aot_paired", "train.per_device_train_batch_size=1")
    with pytest.raises(ConfigError, match="at least 2"):
        build_training_args(cfg, str(tmp_path))


def run_script(*args):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_cfg_job_prints_the_config_and_loads_nothing(tmp_path):
    out = tmp_path / "never"
    proc = run_script("--cfg", "job", "model=merlinite", "loss=aot_unpaired", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert "name_or_path: ibm/merlinite-7b" in proc.stdout and "beta: 0.01" in proc.stdout
    assert not out.exists()


@pytest.mark.parametrize(
    "override,expected",
    [
        ("model=gpt5", "Available options in 'model'"),
        ("loss=orpo", "Available options in 'loss'"),
        ("data=imagenet", "Available options in 'data'"),
        ("train.max_stepz=3", "max_stepz"),
    ],
)
def test_unknown_names_and_keys_fail_listing_choices(override, expected):
    with pytest.raises(Exception, match=expected) as error:  # Hydra's composition errors
        compose(override)
    if override.startswith("model="):
        assert "merlinite" in str(error.value) and "tiny" in str(error.value)


def test_the_cli_reports_an_unknown_name_with_the_choices():
    proc = run_script("--cfg", "job", "loss=orpo")
    assert proc.returncode != 0
    assert "Available options in 'loss'" in proc.stderr and "aot_unpaired" in proc.stderr


#: one setting (or a few) per check of ``aot.config.check_config``, and the error it gives
BAD_SETTINGS = [
    (["loss.penalty=relu"], "loss.penalty='relu' is unknown; valid: logistic, hinge"),
    (["loss.sort=bitonic"], "loss.sort='bitonic' is unknown; valid: hard, soft, sinkhorn"),
    (["loss.beta=0"], "loss.beta must be > 0"),
    (["loss.beta=-0.1"], "loss.beta must be > 0"),
    (["loss.sort=soft", "loss.sort_strength=0"], "loss.sort_strength must be > 0"),
    (["loss.label_smoothing=0.5"], r"loss.label_smoothing must be in \[0, 0.5\)"),
    (["loss.label_smoothing=-0.1"], r"loss.label_smoothing must be in \[0, 0.5\)"),
    (["loss.label_smoothing=0.1", "loss.penalty=hinge"], "logistic penalty only"),
    (["train.max_prompt_length=64"], "train.max_prompt_length=64 must be below train.max_length=64"),
    (["train.resume=/nowhere/checkpoint-5"], "train.resume='/nowhere/checkpoint-5': no checkpoint there"),
    (["model.dtype=float8"], "model.dtype='float8' is unknown; valid: float32, bfloat16, float16"),
    (["train.logps_chunk=-1"], "train.logps_chunk must be a whole number of tokens >= 0"),
    (["train.bf16=sometimes"], "train.bf16='sometimes' is unknown; valid: auto, true, false"),
    (["train.padding_free=maybe"], "train.padding_free='maybe' is unknown; valid: auto"),
    (["data.source=ftp"], "data.source='ftp' is unknown; valid: sample, local, hub_paired"),
    (["loss.name=orpo"], "unknown loss 'orpo'; valid: aot_unpaired, aot_paired, dpo, ipo, kto"),
    (["loss=aot_paired", "train.per_device_train_batch_size=1"], "use a per-device batch of at least 2"),
    (["loss.ot_batch=world"], "loss.ot_batch must be global or local, got 'world'"),
    (
        ["train.per_device_train_batch_size=8", "loss.ot_batch_size=12"],
        "loss.ot_batch_size=12 must be a multiple of train.per_device_train_batch_size=8",
    ),
    (["loss=kto", "train.precompute_ref=true"], "train.precompute_ref is for our trainer"),
    (["loss=dpo", "data.view=unpaired"], r"loss=dpo needs paired rows; data=sample \(data.view=unpaired\)"),
    (
        ["loss.sort=sinkhorn", "train.per_device_train_batch_size=8", "loss.ot_batch_size=256"],
        "loss.sort=sinkhorn sorts 256 values per device, above its limit of 128",
    ),
]


@pytest.mark.parametrize("overrides,expected", BAD_SETTINGS)
def test_every_bad_setting_is_refused_before_anything_loads(tmp_path, overrides, expected):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=expected):
        build_training_args(compose(*overrides), str(out))
    from aot.run import train

    with pytest.raises(ConfigError, match=expected):  # the run stops before data, model or outputs
        train(compose(f"output_dir={out}", *overrides))
    assert not out.exists()


#: run in a fresh interpreter: every recipe combination and every bad setting checked, and the
#: top-level packages that took
CHECK_EVERYTHING = """
import json, sys
from aot.config import ConfigError, check_config, compose
errors = []
for overrides in json.loads(sys.argv[1]):
    try:
        check_config(compose(*overrides))
        errors.append(None)
    except ConfigError as e:
        errors.append(str(e))
print(json.dumps({"errors": errors, "imported": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_checking_every_recipe_and_every_bad_setting_imports_no_ml_stack():
    """Composing and checking (every check made before loading) import none of torch,
    transformers, peft, datasets, accelerate or TRL (tests/unit/test_startup.py: the CLI)."""
    combos = list(itertools.product(MODELS, LOSS_NAMES, DATA))
    cases = [[f"model={m}", f"loss={loss}", f"data={d}"] for m, loss, d in combos]
    cases += [overrides for overrides, _ in BAD_SETTINGS]
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_EVERYTHING, json.dumps(cases)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    imported = set(result["imported"])
    assert {"hydra", "aot"} <= imported
    assert not imported & {"torch", "transformers", "peft", "datasets", "accelerate", "trl"}
    for (model, loss, data), error in zip(combos, result["errors"]):
        refused = loss in PAIRED_ONLY and data in ("helpsteer", "pku")
        assert (error is not None) == refused and (not refused or "needs paired rows" in error), (
            model,
            loss,
            data,
            error,
        )
    for (overrides, expected), error in zip(BAD_SETTINGS, result["errors"][len(combos) :]):
        assert error is not None and re.search(expected, error), (overrides, error)


def test_label_smoothing_with_the_logistic_penalty_and_dpo_is_accepted(tmp_path):
    build_training_args(compose("loss.label_smoothing=0.1"), str(tmp_path))
    build_training_args(compose("loss=dpo", "loss.label_smoothing=0.1", "loss.penalty=hinge"), str(tmp_path))


def test_a_recipe_template_is_a_fallback_and_merlinites_emits_bos(tmp_path, tiny_path):
    import shutil

    from aot.models import load_tokenizer

    cfg = compose("model=merlinite")
    own = load_tokenizer(cfg, str(tiny_path))  # the tiny tokenizer ships a template: it is kept
    assert own.chat_template != cfg.model.chat_template
    bare = tmp_path / "bare"
    shutil.copytree(tiny_path, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(cfg, str(bare))
    assert tok.chat_template == cfg.model.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == f"{tok.bos_token}<|user|>\nhi\n<|assistant|>\n"


def test_the_experiment_trains_every_registered_method_on_its_view():
    from evaluation.experiment.settings import METHODS as EXPERIMENT_METHODS
    from evaluation.experiment.settings import UNPAIRED_METHODS

    assert sorted(EXPERIMENT_METHODS) == sorted(METHODS)
    assert set(UNPAIRED_METHODS) == {"aot_unpaired", "kto"}
