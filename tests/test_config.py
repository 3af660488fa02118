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


@pytest.mark.parametrize("override,message", [
    ("train.eval_every=0", r"train\.eval_every: must be positive, got 0; to evaluate only at the end"),
    ("train.log_every=0", r"train\.log_every: must be positive, got 0"),
    ("model.d_model=0", r"model\.d_model: must be positive, got 0"),
    ("model.n_heads=0", r"model\.n_heads: must be positive, got 0"),
    ("model.n_heads=3", r"model\.d_model=128 is not divisible by model\.n_heads=3"),
    ("optim.lr=.nan", r"optim\.lr: must be a finite number, got nan"),
    ("optim.lr=1e999", r"optim\.lr: must be a finite number, got inf"),
    ("optim.lr=-1e-3", r"optim\.lr: must lie in \(0, inf\), got -0\.001"),
    ("optim.warmup_steps=-5", r"optim\.warmup_steps: must be >= 0, got -5"),
    ("optim.b2=1.0", r"optim\.b2: must lie in \[0, 1\), got 1\.0"),
    ("optim.weight_decay=.inf", r"optim\.weight_decay: must be a finite number"),
    ("model.dropout=1.5", r"model\.dropout: must lie in \[0, 1\)"),
    ("data.seq_len=512", r"data\.seq_len=512 exceeds model\.max_len=256"),
    ("checkpoint.max_to_keep=0", r"checkpoint\.max_to_keep: must be positive"),
])
def test_values_that_used_to_crash_or_pass_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):  # before: a ZeroDivisionError later, or accepted
        config_from_dict({}, [override])


def test_a_pretrained_models_sizes_are_not_checked_against_the_scratch_defaults():
    cfg = config_from_dict({}, ["model.pretrained=/some/dir", "model.d_model=0", "data.seq_len=512"])
    assert cfg.data.seq_len == 512  # checked against the loaded model's positions instead (session)


def test_a_yaml_file_that_is_not_a_mapping_or_not_utf8_is_one_line_naming_the_file(tmp_path, capsys):
    from scaling_jax import cli
    listed = tmp_path / "list.yaml"
    listed.write_text("- train\n- steps\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping of sections .* got a list"):
        load_config(listed)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"run:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml:2: not UTF-8 text"):
        load_config(latin)
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:2:1: not valid YAML: expected the node content"):
        load_config(broken)  # before: yaml's three-line message
    for path in (listed, latin, broken):
        assert cli.main(["train", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("scaling-jax train: error: ") and path.name in err[0]
