"""Config files only set values; every key and type is checked with a message that names it."""
import pytest
import yaml

from conftest import ROOT
from premem_kit.core import config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_file_and_overrides(tmp_path):
    cfg = config.load_config(write(tmp_path, "learning_rate: 1.0e-4\nnum_epochs: 6\n"),
                             ["batch_size=24", "micro_batch_size=8", "task=math", "math_levels=[1,2,3]", "tokenizer="])
    assert cfg.learning_rate == 1e-4 and cfg.num_epochs == 6
    assert cfg.batch_size == 24 and cfg.math_levels == [1, 2, 3] and cfg.tokenizer is None
    assert cfg.warmup_steps == config.Config().warmup_steps == 20
    assert config.load_config(None, ["learning_rate=2"]).learning_rate == 2.0  # int accepted as float


def test_unknown_key_names_the_nearest(tmp_path):
    with pytest.raises(config.ConfigError, match=r"c\.yaml: unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        config.load_config(write(tmp_path, "learning_rat: 1.0e-4\n"))
    with pytest.raises(config.ConfigError, match="did you mean 'micro_batch_size'"):
        config.load_config(None, ["micro_batchsize=2"])


def test_exponent_without_a_decimal_point_is_a_number(tmp_path):
    # YAML 1.1 reads 5e-5 as a string; on the command line and in files it is the number users mean
    assert config.load_config(None, ["learning_rate=5e-5"]).learning_rate == 5e-5
    assert config.load_config(write(tmp_path, "learning_rate: 2e-4\n")).learning_rate == 2e-4
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
    """T 0.8 everywhere but RFT (greedy, as Yuan et al. report); top-p 0.95 for GSM8K, 1.0 for MATH (the
    authors' MATH sampler); 512 new tokens for GSM8K, 1024 for MATH."""
    from conftest import ROOT

    recipes = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
    seen = set()
    for p in recipes:
        cfg = config.load_config(p)
        if p.name.startswith("rft_"):
            assert (cfg.eval_temperature, cfg.eval_samples, cfg.eval_max_new_tokens) == (0.0, 1, 256), p
            continue
        assert cfg.eval_temperature == 0.8, p
        assert cfg.eval_max_new_tokens == {"gsm8k": 512, "math": 1024}[cfg.task], p
        assert cfg.eval_top_p == {"gsm8k": 0.95, "math": 1.0}[cfg.task], p
        seen.add(cfg.task)
    assert seen == {"gsm8k", "math"}
    # a config that does not set top-p gets its task's value
    assert config.load_config(None, ["task=math"]).eval_top_p == 1.0
    assert config.load_config(None, ["task=gsm8k"]).eval_top_p == 0.95
    assert config.load_config(None, ["task=math", "eval_top_p=0.9"]).eval_top_p == 0.9


def test_per_task_defaults_eval_length_and_live_threshold(tmp_path):
    """A config that does not set them gets its task's: the authors' samplers generate 512 tokens for GSM8K
    and 1024 for MATH (gsm8k_eval_samples.py, math_eval_samples.py); the memorization threshold of the live
    prediction is -2.3 for GSM8K and -1.7 for MATH (gsm8k_analyze.ipynb, math_analyze.ipynb)."""
    from premem_kit import metric

    gsm, math_ = config.load_config(None, ["task=gsm8k"]), config.load_config(None, ["task=math"])
    assert (gsm.eval_max_new_tokens, math_.eval_max_new_tokens) == (512, 1024)
    assert (gsm.live_premem_threshold, math_.live_premem_threshold) == (-2.3, -1.7) == \
        (metric.TASK_THRESHOLDS["gsm8k"], metric.TASK_THRESHOLDS["math"])
    assert config.FIELDS["live_premem_threshold"].metadata["by_task"] == metric.TASK_THRESHOLDS
    assert (gsm.live_premem_max_new_tokens, math_.live_premem_max_new_tokens) == (256, 1024)
    # a value given wins, and a run's config.yaml keeps the value it was written with
    assert config.load_config(None, ["task=math", "eval_max_new_tokens=512"]).eval_max_new_tokens == 512
    again = config.load_config(write(tmp_path, config.dump(math_)))
    assert again.eval_max_new_tokens == 1024 and again.live_premem_threshold == -1.7


def test_yaml_round_trip(tmp_path):
    """YAML -> Config -> YAML -> Config gives the same object and the same text."""
    cfg = config.load_config(ROOT / "configs" / "arith_demo.yaml", ["task=math", "math_levels=[1, 2]", "subset_fraction=1/4"])
    text = config.dump(cfg)
    again = config.load_config(write(tmp_path, text))
    assert again == cfg and config.dump(again) == text
    assert list(yaml.safe_load(text)) == list(config.FIELDS)  # every key, in declaration order


def test_a_run_folder_written_before_the_typed_schema_loads():
    from premem_kit.core import runs

    cfg = runs.read_config(ROOT / "tests" / "fixtures" / "run_before_typed_config")
    assert isinstance(cfg, config.Config) and cfg.model == "pypi:smollm2-135m-instruct" and cfg.data == "data/arith"
    assert cfg.eval_top_p == 0.95 and cfg.run_dir == "runs/arith_demo"


def test_training_arguments_names_are_aliases_or_answered():
    cfg = config.load_config(None, ["num_train_epochs=2", "per_device_train_batch_size=2", "lr_scheduler_type=cosine"])
    assert (cfg.num_epochs, cfg.micro_batch_size, cfg.lr_scheduler) == (2, 2, "cosine")
    with pytest.raises(config.ConfigError, match="'num_train_epochs' and 'num_epochs' set the same key"):
        config.from_mapping({"num_epochs": 1, "num_train_epochs": 2}, "x.yaml")
    with pytest.raises(config.ConfigError, match="unknown config key 'gradient_accumulation_steps'; the kit's key "
                                                 "for that is batch_size"):
        config.load_config(None, ["gradient_accumulation_steps=4"])
    with pytest.raises(config.ConfigError, match="unknown config key 'lr'; the kit's key for that is learning_rate"):
        config.load_config(None, ["lr=3"])


def test_nothing_is_not_a_value_unless_the_schema_says_so(tmp_path):
    with pytest.raises(config.ConfigError, match="key 'learning_rate' needs a number, got nothing"):
        config.load_config(None, ["learning_rate="])
    with pytest.raises(config.ConfigError, match="key 'model' needs a string, got nothing"):
        config.load_config(write(tmp_path, "model:\n"))
    assert config.load_config(None, ["tokenizer="]).tokenizer is None  # tokenizer may be unset


def test_a_key_set_twice_in_a_file_is_an_error(tmp_path):
    with pytest.raises(config.ConfigError, match="key 'learning_rate' appears twice"):
        config.load_config(write(tmp_path, "learning_rate: 1.0e-4\nnum_epochs: 2\nlearning_rate: 2.0e-4\n"))
    with pytest.raises(config.ConfigError, match="'seed' is given twice"):
        config.load_config(None, ["seed=1", "seed=2"])


def test_list_settings_check_their_items():
    with pytest.raises(config.ConfigError, match="'eval_splits' takes a non-empty list of train, test"):
        config.load_config(None, ["eval_splits=[]"])
    with pytest.raises(config.ConfigError, match="'eval_variants' takes a non-empty list"):
        config.load_config(None, ["eval_variants=[original, last]"])


def test_settings_docs_are_generated_from_the_schema():
    text = (ROOT / "docs" / "settings.md").read_text()
    assert config.markdown() in text
    help_text = config.describe()
    assert all(name in help_text for name in config.FIELDS)


@pytest.mark.parametrize("form", ["key=value", "--key value", "--key-with-dashes value", "TrainingArguments name"])
def test_every_script_takes_both_override_forms(form, capsys, tmp_path, monkeypatch):
    """train.py, evaluate.py and curate.py's algo1 / fig8 / scaling: the same setting, the same check, in each
    form; a bad value is exit 2 naming the key before anything is written."""
    import curate
    import evaluate
    import train

    monkeypatch.chdir(tmp_path)
    cfg = ROOT / "configs" / "demo.yaml"
    bad = {"key=value": ["num_epochs=0"], "--key value": ["--num_epochs", "0"],
           "--key-with-dashes value": ["--num-epochs", "0"], "TrainingArguments name": ["--num_train_epochs", "0"]}[form]
    ebad = [w.replace("num_epochs", "eval_samples").replace("num-epochs", "eval-samples") for w in bad]
    calls = [(train.main, [str(cfg), *bad]), (evaluate.main, [str(tmp_path / "run"), *ebad]),
             (curate.main, ["algo1", str(cfg), "--out", "o", "--n-new", "1", *bad]),
             (curate.main, ["fig8", str(cfg), "--out", "o", "--n-new", "1", *bad]),
             (curate.main, ["scaling", str(cfg), "--fractions", "1/2", "1", *bad])]
    for main, argv in calls:
        if form == "TrainingArguments name" and main is evaluate.main:
            continue
        code = main(argv)
        err = capsys.readouterr().err
        key = "eval_samples" if main is evaluate.main else "num_epochs"
        assert code == 2 and f"key '{key}' must be" in err, (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_the_forms_set_the_same_field():
    import train
    from premem_kit.core import overrides

    argv = [str(ROOT / "configs" / "demo.yaml"), "learning_rate=1e-4", "--num-epochs", "2", "--lora_r", "8",
            "--per_device_train_batch_size", "2", "--eval_splits", "test", "--gradient_checkpointing"]
    a, _ = overrides.parse(train.build_parser(), argv, config.FIELDS)
    cfg = train.load(a)
    assert (cfg.learning_rate, cfg.num_epochs, cfg.lora_r, cfg.micro_batch_size) == (1e-4, 2, 8, 2)
    assert cfg.eval_splits == ["test"] and cfg.gradient_checkpointing is True
    with pytest.raises(SystemExit):  # the same key in two spellings is not last-wins
        overrides.parse(train.build_parser(), [argv[0], "--num_epochs", "2", "--num_train_epochs", "3"], config.FIELDS)


def test_options_that_do_not_apply_and_home_paths():
    with pytest.raises(config.ConfigError, match="math_levels filters MATH; this config's task is gsm8k"):
        config.load_config(None, ["math_levels=[1, 2]"])
    assert config.load_config(None, ["task=math", "math_levels=[1]"]).math_levels == [1]
    import os

    assert config.load_config(None, ["run_dir=~/runs/x"]).run_dir == os.path.expanduser("~/runs/x")
