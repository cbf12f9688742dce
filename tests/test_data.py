"""Prompt/target format, label masking, subsets, dataset loading and its errors (real files)."""
import json

import pytest

from premem_kit.tasks import data
from premem_kit.core.config import DataSettings
from conftest import DEMO_DATA


def test_prompt_and_target_are_the_authors_format():
    ex = data.load_split(DataSettings(data=str(DEMO_DATA)), "train")[0]
    row = json.loads((DEMO_DATA / "train.jsonl").read_text().splitlines()[0])
    assert ex["id"] == "gsm8k/train/0"
    assert ex["prompt"] == row["question"] + "\nAnswer:"
    assert ex["target"] == " " + row["answer"] + "\nDone."
    assert ex["reference"] == "72"
    assert data.make_prompt("Q?", " First") == "Q?\nAnswer: First"


def test_labels_mask_the_prompt_and_learn_done(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ex = data.load_split(DataSettings(data=str(DEMO_DATA)), "train")[3]
    enc = data.encode(tok, ex["prompt"], ex["target"])
    n_prompt = len(tok(ex["prompt"])["input_ids"])
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    learned = [t for t in enc["labels"] if t != -100]
    assert len(learned) == len(enc["input_ids"]) - n_prompt
    assert tok.decode(learned) == ex["target"]
    assert tok.decode(learned).endswith("\nDone.")
    assert enc["input_ids"][0] == tok.bos_token_id
    # truncation keeps the prompt and cuts the end of the target
    short = data.encode(tok, ex["prompt"], ex["target"], max_length=n_prompt + 5)
    assert len(short["input_ids"]) == n_prompt + 5 and sum(x != -100 for x in short["labels"]) == 5


def test_collator_pads_with_masked_labels():
    c = data.Collator(pad_token_id=9)
    b = c([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "attention_mask": [1, 1, 1]},
           {"input_ids": [4], "labels": [4], "attention_mask": [1]}])
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = data.Collator(9, "left")([{"input_ids": [4], "labels": [4], "attention_mask": [1]},
                                     {"input_ids": [1, 2], "labels": [1, 2], "attention_mask": [1, 1]}])
    assert left["input_ids"].tolist() == [[9, 4], [1, 2]]


def test_subsets_are_seeded_fixed_and_nested_in_size():
    ids = [f"x/{i}" for i in range(1000)]
    half = data.subset_ids(ids, "half", 0)
    assert half == data.subset_ids(ids, "half", 0)
    assert half != data.subset_ids(ids, "half", 1)
    assert len(half) == 500 and len(set(half)) == 500
    assert len(data.subset_ids(ids, "quarter", 0)) == 250
    assert set(data.subset_ids(ids, "quarter", 0)) <= set(half)
    assert sorted(data.subset_ids(ids, "full", 0)) == sorted(ids)
    sub = data.sample_ids(ids, 10, 3)
    assert sub == data.sample_ids(ids, 10, 3) and sub == sorted(sub, key=ids.index)
    with pytest.raises(data.DataError, match="subset"):
        data.subset_ids(ids, "third", 0)


def test_train_examples_follow_the_config(tmp_path, tiny_model):
    from conftest import tiny_cfg

    cfg = tiny_cfg(tiny_model, tmp_path / "r", subset="half", max_train_examples=None)
    exs = data.train_examples(cfg)
    assert len(exs) == 128
    assert [e["id"] for e in exs] == data.subset_ids([f"gsm8k/train/{i}" for i in range(256)], "half", cfg.seed)


def test_math_local_files_levels_and_boxed_reference(tmp_path):
    rows = [{"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
            {"problem": "frac?", "solution": "So $\\boxed{\\frac{1}{2}}$", "level": "Level 4", "type": "Algebra"},
            {"problem": "set?", "solution": "$\\boxed{\\{1, \\{2\\}\\}}$", "level": "Level 3", "type": "Prealgebra"}]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    exs = data.load_split(DataSettings(task="math", data=str(tmp_path), math_levels=[1, 2, 3]), "train")
    assert [e["id"] for e in exs] == ["math/train/0", "math/train/2"]
    assert [e["level"] for e in exs] == [1, 3]
    assert exs[0]["reference"] == "2"
    assert exs[1]["reference"] == "\\{1, \\{2\\}\\}"
    assert exs[0]["target"] == " It is $\\boxed{2}$.\nDone."


def test_malformed_jsonl_names_file_and_line(tmp_path):
    good = (DEMO_DATA / "train.jsonl").read_text().splitlines()[:3]
    (tmp_path / "train.jsonl").write_text("\n".join(good[:2] + ['{"question": "x", "answer": '] + good[2:]) + "\n")
    (tmp_path / "test.jsonl").write_text(good[0] + "\n")
    with pytest.raises(data.DataError, match=r"train\.jsonl, line 3: not valid JSON"):
        data.load_split(DataSettings(data=str(tmp_path)), "train")
    (tmp_path / "train.jsonl").write_text(good[0] + "\n" + '{"question": "no answer"}\n')
    with pytest.raises(data.DataError, match=r"line 2: missing key\(s\) \['answer'\]"):
        data.load_split(DataSettings(data=str(tmp_path)), "train")


def test_folder_without_train_jsonl(tmp_path):
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(data.DataError, match=r"has no train\.jsonl \(found: \['test\.jsonl'\]\)"):
        data.load_split(DataSettings(data=str(tmp_path)), "train")


def test_hub_dataset_offline_says_how_to_use_local_files(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataError, match="(?s)cannot be reached .*Point 'data' at a local folder"):
        data.load_split(DataSettings(data="openai/gsm8k"), "train")


def test_extra_train_file_keeps_provenance(tmp_path):
    p = tmp_path / "rft.jsonl"
    p.write_text(json.dumps({"question": "q", "answer": "a\n#### 3", "id": "rft/0", "source_id": "gsm8k/train/1"}) + "\n"
                 + json.dumps({"question": "q2", "answer": "b\n#### 4"}) + "\n")
    exs = data.load_extra_file(p, "gsm8k")
    assert [e["id"] for e in exs] == ["rft/0", "rft/1"]
    assert exs[0]["meta"] == {"source_id": "gsm8k/train/1"} and exs[1]["reference"] == "4"


def test_one_prompt_length_policy_for_training_perplexity_and_sampling(tiny_model):
    """A prompt of more than max_length - 1 tokens keeps its BOS and its last tokens (the question's end and
    "\\nAnswer:"), in training, perplexity and sampling alike; the target keeps at least one token."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from premem_kit.models import inference

    tok = AutoTokenizer.from_pretrained(tiny_model)
    long_q = " ".join(["Tom has 3 apples and buys 4 more."] * 400)  # about 3,000 words
    prompt, target = data.make_prompt(long_q), data.make_target("3 + 4 = 7\n#### 7")
    ids, cut = data.tokenize_prompt(tok, prompt, 64)
    assert cut and len(ids) == 63 and ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]).endswith("\nAnswer:")
    enc = data.encode(tok, prompt, target, 64)
    assert len(enc["input_ids"]) == 64 and enc["prompt_cut"] and enc["target_cut"]
    assert enc["input_ids"][:63] == ids and sum(x != -100 for x in enc["labels"]) == 1
    short = data.encode(tok, data.make_prompt("What is 3 + 4?"), target, 64)
    assert not short["prompt_cut"]
    model = LlamaForCausalLM.from_pretrained(tiny_model).eval()
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    inference.sample(model, tok, [prompt], n=1, max_new_tokens=2, batch_size=1, progress=False, max_length=64)
    hook.remove()
    assert seen[0] == 63  # generate saw the cut prompt (then one token per step)
    nll, n = inference.target_nll(model, tok, [prompt], [target], max_length=64, progress=False)
    assert n == [1] and torch.isfinite(torch.tensor(nll)).all()
