"""Config loading: every shipped YAML parses; bad keys and values are named in the error."""
from pathlib import Path

import pytest

from scaling_jax.config import ConfigError, config_from_dict, expand_path, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_configs_scripts_rely_on_exist():
    names = {p.name for p in CONFIGS}
    assert {"ner.yaml", "lm_tiny.yaml", "sweep_cpu.yaml", "isoflop_cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.run.name
    assert cfg.data.train, "a config must name its training data"


def test_overrides_the_launchers_use_are_accepted():
    cfg = config_from_dict({}, ["run.dir=/tmp/x", "train.steps=7", "train.seed=3", "checkpoint.every=2",
                                "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "optim.lr=3e-4"])
    assert (cfg.train.steps, cfg.train.seed, cfg.checkpoint.every) == (7, 3, 2)
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) == (2, 2, 2)
    assert cfg.optim.lr == pytest.approx(3e-4) and str(cfg.run_dir) == "/tmp/x"


def test_unknown_key_names_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys under optim: name, lr"):
        config_from_dict({}, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'bogus'"):
        config_from_dict({"bogus": 1})


def test_wrong_type_and_bad_choice_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer, got 'abc'"):
        config_from_dict({}, ["train.steps=abc"])
    with pytest.raises(ConfigError, match=r"model\.dtype: 'float16' is not one of float32, bfloat16"):
        config_from_dict({}, ["model.dtype=float16"])
    with pytest.raises(ConfigError, match=r"must look like key=value"):
        config_from_dict({}, ["train.steps"])


def test_batch_must_split_into_micro_batches():
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum"):
        config_from_dict({}, ["data.batch_size=10", "train.grad_accum=3"])


def test_env_default_in_paths(monkeypatch):
    monkeypatch.delenv("SJ_TEST_ROOT", raising=False)
    assert expand_path("${SJ_TEST_ROOT:-/a/b}/c") == Path("/a/b/c")
    monkeypatch.setenv("SJ_TEST_ROOT", "/x")
    assert expand_path("${SJ_TEST_ROOT:-/a/b}/c") == Path("/x/c")
