"""The shipped recipes (configs/recipes/) against the papers' and the authors' settings, and the one rule the
kit applies where its regime differs: QLoRA recipes train at 10x the paper's full-finetuning learning rate
(the *-qlora grids' rule, tests/test_sweep.py), a guess until measured, said in each recipe's header."""
from __future__ import annotations

import pytest

from conftest import ROOT
from premem_kit.core import config

RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
PAPER_LR = 2e-5  # appendix A / C recipes (a) and (b), Yuan et al.'s RFT: the full-finetuning rate
QLORA_FACTOR = 10  # the kit's QLoRA rule


def load(name):
    return config.load_config(ROOT / "configs" / "recipes" / name)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_learning_rate_follows_the_stated_rule(path):
    cfg = config.load_config(path)
    head = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    if cfg.lora_r == 0:  # full finetuning: the paper's rate itself
        assert cfg.learning_rate == pytest.approx(PAPER_LR) and cfg.quantization == "none"
    else:
        assert cfg.learning_rate == pytest.approx(PAPER_LR * QLORA_FACTOR)
        assert "10x the paper" in head and "GUESS UNTIL MEASURED" in head, "the header names the rule"
    # the run folder's name says the learning rate it trains at
    assert cfg.run_dir.endswith("_lr2e-4" if cfg.lora_r else "_lr2e-5") or "curation" in path.name \
        or path.name.startswith("rft_")


def test_every_qlora_recipe_is_checked():
    assert sum(config.load_config(p).lora_r > 0 for p in RECIPES) == 8
    assert sum(config.load_config(p).lora_r == 0 for p in RECIPES) == 4


def test_math_recipes_truncate_at_1024_and_llama3_math_has_no_weight_decay():
    """The authors' math_train.py / math_train3.py: model_max_length 1024, no weight_decay (HF's 0.0);
    their gsm8k_train.py sets weight_decay 0.01 and fp16 autocast on fp32 weights."""
    for p in RECIPES:
        cfg = config.load_config(p)
        if cfg.task == "math":
            assert cfg.max_length == 1024, p.name
            assert cfg.weight_decay == 0.0, p.name
    for name in ("llama3_8b_gsm8k.yaml", "fullft_llama3_8b_gsm8k.yaml"):
        assert load(name).weight_decay == 0.01
    full = load("fullft_llama3_8b_gsm8k.yaml")
    assert (full.dtype, full.mixed_precision) == ("fp32", "fp16")
    assert (load("fullft_llama3_8b_math.yaml").dtype, load("fullft_llama3_8b_math.yaml").mixed_precision) == \
        ("fp32", "bf16")


def test_rft_recipe_trains_and_tests_as_yuan_et_al():
    """train_7b.sh / train.py: cosine, 3% warmup, weight decay 0, HF's grad norm 1, 512 tokens, batch 128;
    test.py: greedy, 256 new tokens."""
    cfg = load("rft_llama3_8b_gsm8k.yaml")
    assert (cfg.lr_scheduler, cfg.warmup_ratio, cfg.weight_decay, cfg.max_grad_norm) == ("cosine", 0.03, 0.0, 1.0)
    assert (cfg.max_length, cfg.batch_size, cfg.num_epochs) == (512, 128, 3)
    assert (cfg.eval_temperature, cfg.eval_samples, cfg.eval_max_new_tokens, cfg.eval_splits) == \
        (0.0, 1, 256, ["test"])
