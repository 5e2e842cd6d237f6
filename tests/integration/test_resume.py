"""A run directory belongs to one config: resume never mixes two runs, ablations get their own
directories, a finished run is not trained again, and a stop at the last step keeps the model."""

import hashlib
import json

import pytest
import yaml
from conftest import compose

from aot.config import ConfigError
from aot.run import train

pytestmark = pytest.mark.slow
BASE = [
    "train.max_steps=4",
    "train.save_steps=2",
    "data.max_test_samples=8",
    "train.per_device_train_batch_size=8",
]


def digest(path):
    return hashlib.sha1((path / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_another_config_in_the_same_directory_is_refused_naming_the_keys(tmp_path):
    out = tmp_path / "run"
    train(compose(f"output_dir={out}", *BASE))
    assert json.loads((out / "run.json").read_text())["config"]["loss.beta"] == 0.01
    before = digest(out)
    with pytest.raises(ConfigError) as err:
        train(compose(f"output_dir={out}", *BASE, "loss.beta=0.5", "loss.penalty=hinge"))
    assert "loss.beta: 0.01 -> 0.5" in str(err.value) and "loss.penalty: 'logistic' -> 'hinge'" in str(
        err.value
    )
    assert digest(out) == before  # nothing of the first run was touched
    assert yaml.safe_load((out / "config.yaml").read_text())["loss"]["beta"] == 0.01


def test_ablations_get_their_own_default_directories():
    plain = compose().output_dir
    a, b = compose("loss.beta=0.5").output_dir, compose("loss.beta=0.5", "loss.penalty=hinge").output_dir
    assert len({plain, a, b}) == 3 and a.startswith(plain + "-")
    assert compose("loss.penalty=hinge", "loss.beta=0.5").output_dir == b  # order does not matter
    assert compose("train.resume=never").output_dir == plain  # how a run starts is not what it trains


def test_a_finished_run_started_again_trains_nothing(tmp_path, caplog):
    out = tmp_path / "run"
    first = train(compose(f"output_dir={out}", *BASE))
    before = digest(out)
    with caplog.at_level("INFO", logger="aot"):
        again = train(compose(f"output_dir={out}", *BASE))
    assert "already holds this config's finished run" in caplog.text
    assert again == first and digest(out) == before
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]  # no checkpoint-5


def test_a_stop_request_at_the_last_step_still_saves_the_final_model(tmp_path, monkeypatch):
    stop = tmp_path / "stop"
    stop.touch()  # requested before the first step ends: the stop lands on the last step (max_steps=1)
    monkeypatch.setenv("AOT_STOP_FILE", str(stop))
    out = tmp_path / "run"
    metrics = train(compose(f"output_dir={out}", *BASE, "train.max_steps=1"))
    assert "eval_after" in metrics and (out / "adapter_model.safetensors").is_file()
    assert (out / "metrics.json").is_file()


def test_checkpoints_of_unknown_origin_are_not_resumed(tmp_path):
    out = tmp_path / "run"
    train(compose(f"output_dir={out}", *BASE))
    (out / "run.json").unlink()
    (out / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="no run.json"):
        train(compose(f"output_dir={out}", *BASE))
