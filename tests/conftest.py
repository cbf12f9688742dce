"""Shared fixtures: a tiny random Llama model with a tokenizer trained on the spot (real files in a
local folder, loaded through the same code path as any local model), and the demo data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO_DATA = ROOT / "data" / "gsm8k_demo"
SHARED = ROOT.parent / "shared"


def build_tiny_model(folder: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on GSM8K text and save it with a random 2-layer Llama."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = []
    for line in (DEMO_DATA / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        texts += [r["question"] + "\nAnswer:", " " + r["answer"] + "\nDone."]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer)
    from tokenizers import processors
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO_DATA


def tiny_cfg(model_dir, run_dir, **over) -> dict:
    """A full config for fast CPU runs on the tiny model."""
    import config

    cfg = {k: v[0] for k, v in config.DEFAULTS.items()}
    cfg.update(model=str(model_dir), data=str(DEMO_DATA), run_dir=str(run_dir), quantization="none",
               max_train_examples=16, batch_size=4, micro_batch_size=2, num_epochs=2, learning_rate=1e-3,
               warmup_steps=1, max_length=512, lora_r=4, lora_alpha=8, lora_dropout=0.1,
               eval_samples=2, eval_max_new_tokens=24, eval_batch_size=8,
               eval_train_examples=8, eval_test_examples=6)
    cfg.update(over)
    config.validate(cfg)
    return cfg
