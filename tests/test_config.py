"""Config files only set values; every key and type is checked with a message that names it."""
import pytest

from premem_kit import config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_file_and_overrides(tmp_path):
    cfg = config.load_config(write(tmp_path, "learning_rate: 1.0e-4\nnum_epochs: 6\n"),
                             ["batch_size=24", "micro_batch_size=8", "math_levels=[1,2,3]", "tokenizer="])
    assert cfg["learning_rate"] == 1e-4 and cfg["num_epochs"] == 6
    assert cfg["batch_size"] == 24 and cfg["math_levels"] == [1, 2, 3] and cfg["tokenizer"] is None
    assert cfg["warmup_steps"] == config.DEFAULTS["warmup_steps"][0]
    assert config.load_config(None, ["learning_rate=2"])["learning_rate"] == 2.0  # int accepted as float


def test_unknown_key_names_the_nearest(tmp_path):
    with pytest.raises(config.ConfigError, match=r"c\.yaml: unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        config.load_config(write(tmp_path, "learning_rat: 1.0e-4\n"))
    with pytest.raises(config.ConfigError, match="did you mean 'micro_batch_size'"):
        config.load_config(None, ["micro_batchsize=2"])


def test_exponent_without_a_decimal_point_is_a_number(tmp_path):
    # YAML 1.1 reads 5e-5 as a string; on the command line and in files it is the number users mean
    assert config.load_config(None, ["learning_rate=5e-5"])["learning_rate"] == 5e-5
    assert config.load_config(write(tmp_path, "learning_rate: 2e-4\n"))["learning_rate"] == 2e-4
    with pytest.raises(config.ConfigError, match=r"key 'learning_rate' expects a number, got 'fast'"):
        config.load_config(None, ["learning_rate=fast"])


def test_wrong_types_and_choices(tmp_path):
    with pytest.raises(config.ConfigError, match=r"key 'batch_size' expects an integer, got 'big'"):
        config.load_config(write(tmp_path, "batch_size: big\n"))
    with pytest.raises(config.ConfigError, match=r"key 'gradient_checkpointing' expects true/false"):
        config.load_config(None, ["gradient_checkpointing=1"])
    with pytest.raises(config.ConfigError, match=r"key 'learning_rate' expects a number"):
        config.load_config(None, ["learning_rate=true"])
    with pytest.raises(config.ConfigError, match=r"'quantization' must be one of auto, 4bit, 8bit, none"):
        config.load_config(None, ["quantization=3bit"])
    with pytest.raises(config.ConfigError, match="multiple of micro_batch_size"):
        config.load_config(None, ["batch_size=10", "micro_batch_size=4"])
    with pytest.raises(config.ConfigError, match="not of the form key=value"):
        config.load_config(None, ["batch_size"])
    with pytest.raises(config.ConfigError, match="expected a mapping"):
        config.load_config(write(tmp_path, "- a\n- b\n"))


def test_every_shipped_config_loads():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        config.load_config(f)


def test_recipes_sample_as_the_authors_per_task():
    """T 0.8 everywhere; top-p 0.95 for GSM8K, 1.0 for MATH (the authors' MATH sampler)."""
    from conftest import ROOT

    recipes = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
    seen = set()
    for p in recipes:
        cfg = config.load_config(p)
        assert cfg["eval_temperature"] == 0.8, p
        assert cfg["eval_top_p"] == {"gsm8k": 0.95, "math": 1.0}[cfg["task"]], p
        seen.add(cfg["task"])
    assert seen == {"gsm8k", "math"}
    # a config that does not set top-p gets its task's value
    assert config.load_config(None, ["task=math"])["eval_top_p"] == 1.0
    assert config.load_config(None, ["task=gsm8k"])["eval_top_p"] == 0.95
    assert config.load_config(None, ["task=math", "eval_top_p=0.9"])["eval_top_p"] == 0.9
