"""Shared fixtures: a tiny random Llama model with a tokenizer trained on the spot (real files in a
local folder, loaded through the same code path as any local model), and the demo data."""
from __future__ import annotations

import dataclasses

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
def published_ckpts(tmp_path_factory) -> Path:
    """The authors' published ckpts/ folder of 7 GSM8K runs: ../shared's copy, else the committed fixture
    (tests/fixtures/kang2025_gsm8k_7runs.npz: the same arrays, MIT, see tests/fixtures/KANG2025_LICENSE)
    unpacked into the authors' layout."""
    shared = SHARED / "data" / "kang2025" / "ckpts"
    if shared.is_dir():
        return shared
    import numpy as np

    root = tmp_path_factory.mktemp("kang2025") / "ckpts"
    with np.load(ROOT / "tests" / "fixtures" / "kang2025_gsm8k_7runs.npz") as z:
        for rel in z.files:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / rel, z[rel])
    return root


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO_DATA


def tiny_cfg(model_dir, run_dir, **over):
    """A full config (a checked Config) for fast CPU runs on the tiny model."""
    from premem_kit.core import config

    tiny = dict(model=str(model_dir), data=str(DEMO_DATA), run_dir=str(run_dir), quantization="none",
                max_train_examples=16, batch_size=4, micro_batch_size=2, num_epochs=2, learning_rate=1e-3,
                warmup_steps=1, max_length=512, lora_r=4, lora_alpha=8, lora_dropout=0.1,
                eval_samples=2, eval_max_new_tokens=24, eval_batch_size=8,
                eval_train_examples=8, eval_test_examples=6)
    return config.from_mapping({**tiny, **over}, "tiny_cfg")


def record_rows(ids, step, split, accs, ppls=None, *, epoch=None, variant="original", n_samples=4, samples=None):
    """Record rows (records.py schema) with the given accuracy (and perplexity) per example."""
    import math

    rows = []
    for k, (i, a) in enumerate(zip(ids, accs)):
        c = int(round(a * n_samples))
        rows.append({"id": i, "step": step, "epoch": float(step) / 100 if epoch is None else float(epoch),
                     "split": split, "variant": variant,
                     "samples": samples[k] if samples is not None else [f"s{j}" for j in range(n_samples)],
                     "answers": ["1"] * n_samples, "outcomes": ["correct"] * c + ["incorrect"] * (n_samples - c),
                     "accuracy": float(a),
                     "perplexity": float(ppls[k]) if ppls is not None else math.nan, "target_tokens": 10})
    return rows


def write_synthetic_run(run_dir, steps, acc, ppl, test_acc=None, *, epochs=None, config=None, ids=None,
                        n_test=3, complete_checkpoints=False) -> Path:
    """The one synthetic run folder of the tests: config.yaml, subset_ids.json, train records with
    acc[ckpt, ex] and ppl[ckpt, ex] at each step, and test records whose mean accuracy is test_acc[ckpt]
    (None: no test record at that step). complete_checkpoints adds empty checkpoint-<step> folders with
    the .complete marker (no weights)."""
    import numpy as np
    import yaml

    from premem_kit.core import files
    from premem_kit.core import records
    from premem_kit.core import runs

    run_dir = Path(run_dir)
    acc, ppl = np.asarray(acc, float), np.asarray(ppl, float)
    ids = list(ids) if ids is not None else [f"gsm8k/train/{i}" for i in range(acc.shape[1])]
    cfg = dict(task="gsm8k", model="toy", learning_rate=1e-5, num_epochs=3, subset="full", batch_size=8)
    cfg.update(config if isinstance(config, dict) else dataclasses.asdict(config) if config else {})
    files.atomic_write_text(runs.config_path(run_dir), yaml.safe_dump(cfg))
    files.atomic_write_json(runs.subset_ids_path(run_dir), ids)
    for k, s in enumerate(steps):
        ep = float(epochs[k]) if epochs is not None else float(s) / 100
        records.write_records(runs.record_path(run_dir, s, "train"),
                              record_rows(ids, s, "train", acc[k], ppl[k], epoch=ep))
        if test_acc is not None and test_acc[k] is not None:
            test_ids = [f"gsm8k/test/{i}" for i in range(n_test)]
            records.write_records(runs.record_path(run_dir, s, "test"),
                                  record_rows(test_ids, s, "test", [test_acc[k]] * n_test, epoch=ep))
        if complete_checkpoints and s:
            files.atomic_write_json(runs.marker_path(runs.checkpoint_dir(run_dir, s)), {"step": s, "epoch": ep})
    return run_dir
