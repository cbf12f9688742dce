"""train.py on a tiny random model (real tokenizer, real Trainer), resume after a kill, bad inputs,
and a few LoRA steps on the real SmolLM2-135M GGUF model."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, tiny_cfg
from premem_kit.core import config
from premem_kit.models import precision
from premem_kit.core import runs
from premem_kit.training import trainer as training


def adapter_weights(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "adapter_model.safetensors"))


def test_tiny_model_trains_and_checkpoints_every_epoch(tmp_path, tiny_model):
    cfg = tiny_cfg(tiny_model, tmp_path / "run", num_epochs=2)  # 16 examples, batch 4 -> 4 steps/epoch
    summary = training.run_training(cfg)
    run = tmp_path / "run"
    assert [p.name for p in runs.complete_checkpoints(run)] == ["checkpoint-4", "checkpoint-8"]
    assert summary["optimizer_steps"] == 8 and summary["examples"] == 16
    for ck in runs.complete_checkpoints(run):
        assert (ck / "adapter_model.safetensors").exists() and (ck / "optimizer.pt").exists()
        assert (ck / "trainer_state.json").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved == config.to_dict(cfg) and runs.read_config(run) == cfg
    ids = json.loads((run / "subset_ids.json").read_text())
    assert len(ids) == 16 and all(i.startswith("gsm8k/train/") for i in ids)
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert all(r["learning_rate"] is not None and r["loss"] > 0 for r in log)
    assert log[-1]["loss"] < log[0]["loss"]  # lr 1e-3 on 16 examples: the loss goes down
    # one warmup step from 0 (HF convention: step 1 runs at lr 0), the peak, then linear decay
    lrs = [r["learning_rate"] for r in log]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[1:], lrs[2:]))
    # adapters changed between epochs
    w4, w8 = adapter_weights(run / "checkpoint-4"), adapter_weights(run / "checkpoint-8")
    assert any(not torch.equal(w4[k], w8[k]) for k in w4)
    # a second run with the same config does nothing
    before = (run / "checkpoint-8" / "adapter_model.safetensors").stat().st_mtime_ns
    training.run_training(cfg)
    assert (run / "checkpoint-8" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_effective_batch_uses_gradient_accumulation(tmp_path, tiny_model):
    cfg = tiny_cfg(tiny_model, tmp_path / "run", batch_size=8, micro_batch_size=2, num_epochs=1)
    from premem_kit.models import loading as models

    tok, model = models.load_for_training(cfg)
    trainer = training.build_trainer(cfg, tmp_path / "run", [{"prompt": "a", "target": "b"}] * 16, tok, model)
    assert trainer.args.gradient_accumulation_steps == 4
    assert trainer.args.per_device_train_batch_size == 2


def _write_cfg(tmp_path, cfg):
    p = tmp_path / "cfg.yaml"
    p.write_text(config.dump(cfg))
    return p


def test_resume_after_kill_matches_uninterrupted(tmp_path, tiny_model):
    # 4 epochs x 4 steps; micro-batches of 1 so a step takes long enough to kill the run mid-epoch
    common = dict(num_epochs=4, batch_size=4, micro_batch_size=1, lora_dropout=0.1)
    ref_cfg = tiny_cfg(tiny_model, tmp_path / "ref", **common)
    training.run_training(ref_cfg)

    cfg = tiny_cfg(tiny_model, tmp_path / "killed", **common)
    path = _write_cfg(tmp_path, cfg)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "killed"
    deadline = time.time() + 120
    # kill once the first epoch's checkpoint is complete and a step of epoch 2 has been logged
    while time.time() < deadline and proc.poll() is None:
        log = run / "log.jsonl"
        if (run / "checkpoint-4" / runs.COMPLETE).exists() and log.exists() and \
                any(json.loads(x)["step"] >= 5 for x in log.read_text().splitlines() if x.strip()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "train_summary.json").exists()
    done_before = [p.name for p in runs.complete_checkpoints(run)]
    assert done_before and "checkpoint-16" not in done_before

    summary = training.run_training(cfg)  # the same command again resumes
    assert summary["optimizer_steps"] == 16
    a, b = adapter_weights(tmp_path / "ref" / "checkpoint-16"), adapter_weights(run / "checkpoint-16")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))  # no duplicated log lines from the redone steps


def test_changed_config_in_existing_run_is_refused(tmp_path, tiny_model):
    cfg = tiny_cfg(tiny_model, tmp_path / "run", num_epochs=1)
    training.run_training(cfg)
    (tmp_path / "run" / "train_summary.json").unlink()
    with pytest.raises(config.ConfigError, match=r"different config \(keys \['learning_rate'\]"):
        training.run_training(config.updated(cfg, "test", learning_rate=5e-4))


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_bad_inputs_give_clear_errors_and_leave_nothing(tmp_path, tiny_model):
    good = tiny_cfg(tiny_model, tmp_path / "run")
    path = _write_cfg(tmp_path, good)
    r = run_cli(path, "learning_rat=1e-4")
    assert r.returncode == 2 and "unknown config key 'learning_rat'; did you mean 'learning_rate'" in r.stderr
    r = run_cli(path, "num_epochs=three")
    assert r.returncode == 2 and "key 'num_epochs' expects an integer or a number, got 'three'" in r.stderr
    empty = tmp_path / "nodata"
    empty.mkdir()
    r = run_cli(path, f"data={empty}")
    assert r.returncode == 2 and "has no train.jsonl" in r.stderr
    r = run_cli(path, f"model={tmp_path / 'missing.gguf'}")
    assert r.returncode == 2 and "missing.gguf does not exist" in r.stderr
    r = run_cli(path, "model=meta-llama/Meta-Llama-3-8B")
    assert r.returncode == 2 and "pypi:smollm2-135m-instruct" in r.stderr and "cannot be reached" in r.stderr
    assert not (tmp_path / "run").exists()


def test_help_config_lists_every_key():
    r = run_cli("--help-config")
    assert r.returncode == 0 and all(k in r.stdout for k in config.FIELDS)


def test_real_smollm2_lora_steps_lower_the_target_perplexity(tmp_path):
    """A few LoRA steps on the real PyPI-shipped SmolLM2-135M (GGUF) on 4 GSM8K examples."""
    pytest.importorskip("gguf")
    from premem_kit.tasks import data
    from premem_kit.models import inference
    from premem_kit.models import loading as models

    cfg = tiny_cfg("pypi:smollm2-135m-instruct", tmp_path / "real", max_train_examples=4, batch_size=2,
                   micro_batch_size=2, num_epochs=2, learning_rate=1e-3, max_length=192, lora_r=8, lora_alpha=16,
                   lora_dropout=0.0)
    try:
        models.resolve_source(cfg.model)
    except models.ModelError as e:
        pytest.skip(str(e))
    exs = data.train_examples(cfg)
    tok = models.load_tokenizer(cfg.model)
    base = models.load_base_model(cfg)
    before, _ = inference.perplexities(base, tok, [e["prompt"] for e in exs], [e["target"] for e in exs],
                                       max_length=192, progress=False)
    del base
    summary = training.run_training(cfg)
    assert summary["optimizer_steps"] == 4
    model = models.load_checkpoint(cfg, tmp_path / "real" / "checkpoint-4")
    after, _ = inference.perplexities(model, tok, [e["prompt"] for e in exs], [e["target"] for e in exs],
                                      max_length=192, progress=False)
    assert all(1.0 < a < b for a, b in zip(after, before)), (before, after)


def test_live_premem_logs_a_prediction_at_every_checkpoint(tmp_path, tiny_model):
    import numpy as np

    from premem_kit import metric

    cfg = tiny_cfg(tiny_model, tmp_path / "live", num_epochs=2, live_premem=True, live_premem_examples=5,
                   live_premem_samples=2, live_premem_max_new_tokens=8)
    training.run_training(cfg)
    rows = [json.loads(x) for x in (tmp_path / "live" / "live_premem.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8]
    assert rows[0]["ids"] == rows[1]["ids"] and len(rows[0]["ids"]) == 5
    # the logged prediction and memorized fraction are metric.py's over the logged per-example arrays
    A = np.array([r["acc"] for r in rows])
    P = np.array([r["ppl"] for r in rows])
    t = cfg.live_premem_threshold
    want = metric.predicted_test_accuracy(A, P, threshold_loglog=t)
    assert [r["predicted_test_acc"] for r in rows] == pytest.approx(want.tolist())
    assert [r["memorized"] for r in rows] == pytest.approx((metric.loglog(P) < t).mean(axis=1).tolist())
    assert [r["train_acc"] for r in rows] == pytest.approx(A.mean(axis=1).tolist())


def test_live_premem_callback_on_a_plain_trainer_logs_through_report_to(tmp_path, tiny_model):
    """The callback on an ordinary HF Trainer: its numbers reach every logging callback (what
    report_to's TensorBoard / W&B integrations are), and the memorized fraction follows the threshold."""
    import numpy as np
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from premem_kit.tasks import data
    from premem_kit import metric
    from premem_kit.models import loading as models
    from premem_kit.training.callbacks import LivePreMemCallback

    cfg = tiny_cfg(tiny_model, tmp_path / "unused")
    tok, model = models.load_for_training(cfg)
    exs = data.train_examples(cfg)
    feats = [{k: v for k, v in data.encode(tok, e["prompt"], e["target"]).items() if k != "target_cut"}
             for e in exs]

    class Recorder(TrainerCallback):  # stands where report_to's integrations stand
        logs = []

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs))

    args = TrainingArguments(output_dir=str(tmp_path / "plain"), per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=1e-3, save_strategy="epoch", report_to=[], logging_steps=1,
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=feats, data_collator=data.Collator(tok.pad_token_id),
                      callbacks=[Recorder()])
    ppl_probe = LivePreMemCallback(exs[:6], tok, "gsm8k", samples=1, max_new_tokens=4).score(model, 0, 0.0)["ppl"]
    t = float(np.median(metric.loglog(ppl_probe)))  # half of the examples on each side at the start
    cb = LivePreMemCallback(exs[:6], tok, "gsm8k", threshold_loglog=t, samples=2, max_new_tokens=8).attach(trainer)
    trainer.train()
    logged = [r for r in Recorder.logs if "premem/predicted_test_acc" in r]
    assert [round(r["epoch"]) for r in logged] == [1, 2]
    assert [r["premem/train_acc"] for r in logged] == pytest.approx([r["train_acc"] for r in cb.rows])
    P = np.array([r["ppl"] for r in cb.rows])
    assert [r["premem/memorized"] for r in logged] == pytest.approx((metric.loglog(P) < t).mean(axis=1).tolist())
    # training lowers perplexity: more examples are below the threshold after training than at the start
    assert logged[-1]["premem/memorized"] > 0.5


def test_resume_leaves_foreign_checkpoints_alone_and_drops_a_torn_log_line(tmp_path, tiny_model):
    cfg = tiny_cfg(tiny_model, tmp_path / "run", num_epochs=1)
    run = tmp_path / "run"
    training.run_training(cfg)
    (run / "train_summary.json").unlink()
    foreign = run / "checkpoint-99"  # written by someone else: no .complete, no .saving marker
    foreign.mkdir()
    (foreign / "weights.bin").write_text("x")
    ours = run / "checkpoint-50"  # an unfinished save of this kit
    ours.mkdir()
    training.saving_marker(run, 50).write_text("")
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 5, "los')  # a kill in the middle of an append
    with pytest.warns(UserWarning, match="torn last line"):
        training.run_training(cfg)
    assert (foreign / "weights.bin").exists() and not ours.exists()
    steps = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_a_non_empty_folder_that_is_not_a_run_is_refused(tmp_path, tiny_model):
    other = tmp_path / "hf_output"
    (other / "checkpoint-10").mkdir(parents=True)
    with pytest.raises(config.ConfigError, match="not a run folder made by train.py"):
        training.run_training(tiny_cfg(tiny_model, other))
    assert (other / "checkpoint-10").exists() and not (other / "config.yaml").exists()


@pytest.mark.parametrize("recipe", ["fullft_llama3_8b_gsm8k", "fullft_gemma2_9b_math"])
def test_full_finetuning_recipe_builds_the_optimizer_it_names(tmp_path, tiny_model, recipe):
    """The authors' regime on one GPU: no adapter, fp32 master weights, bitsandbytes' paged 8-bit AdamW,
    the recipe's weight decay, gradient checkpointing (the tiny model on CPU stands in for 8-9B)."""
    from conftest import DEMO_DATA
    from premem_kit.tasks import data
    from premem_kit.models import loading as models

    cfg = config.load_config(ROOT / "configs" / "recipes" / f"{recipe}.yaml",
                             [f"model={tiny_model}", f"data={DEMO_DATA}", f"run_dir={tmp_path / 'r'}", "task=gsm8k",
                              "max_train_examples=4", "batch_size=4", "micro_batch_size=2"])
    tok, model = models.load_for_training(cfg)
    assert not hasattr(model, "peft_config") and all(p.requires_grad for p in model.parameters())
    trainer = training.build_trainer(cfg, tmp_path / "r", data.train_examples(cfg), tok, model)
    opt = trainer.create_optimizer()
    assert type(opt).__module__.startswith("bitsandbytes.optim") and opt.is_paged and opt.args.optim_bits == 8
    decay = max(g["weight_decay"] for g in opt.param_groups)  # norms and biases get none, as in the HF Trainer
    assert decay == {"fullft_llama3_8b_gsm8k": 0.01, "fullft_gemma2_9b_math": 0.0}[recipe]
    assert trainer.args.gradient_checkpointing and next(model.parameters()).dtype == torch.float32
    autocast = precision.choose(cfg.dtype, cfg.mixed_precision, "cuda", (9, 0)).autocast
    assert autocast == {"fullft_llama3_8b_gsm8k": "fp16", "fullft_gemma2_9b_math": "bf16"}[recipe]  # the authors'


@pytest.mark.parametrize("dtype,mp,device,cap,want", [
    ("auto", "auto", "cpu", None, ("fp32", "no", "bf16")),
    ("auto", "auto", "cuda", (9, 0), ("bf16", "bf16", "bf16")),      # H100: pure bf16
    ("auto", "auto", "cuda", (8, 0), ("bf16", "bf16", "bf16")),      # A100
    ("auto", "auto", "cuda", (7, 5), ("fp32", "fp16", "fp16")),      # T4: fp32 master weights, fp16 autocast
    ("auto", "auto", "cuda", (7, 0), ("fp32", "fp16", "fp16")),      # V100
    ("fp32", "bf16", "cuda", (9, 0), ("fp32", "bf16", "bf16")),      # the full-finetuning recipes
    ("fp32", "bf16", "cuda", (7, 5), ("fp32", "bf16", "bf16")),      # kept as configured, with a warning
    ("fp32", "auto", "cuda", (9, 0), ("fp32", "no", "bf16")),
    ("fp16", "auto", "cuda", (7, 5), ("fp16", "fp16", "fp16")),
])
def test_precision_by_device(dtype, mp, device, cap, want):
    p = precision.choose(dtype, mp, device, cap)
    assert (p.weights, p.autocast, p.compute_4bit) == want
    assert ("emulated" in p.reason) == (cap is not None and cap[0] < 8 and "bf16" in (dtype, mp))


def test_the_precision_is_logged_and_written_to_the_run(tmp_path, tiny_model, caplog):
    import logging

    cfg = tiny_cfg(tiny_model, tmp_path / "run", num_epochs=1, max_train_examples=4)
    with caplog.at_level(logging.INFO, logger="train"):
        training.run_training(cfg)
    written = json.loads(runs.precision_path(cfg.run_dir).read_text())
    assert written == {"weights": "fp32", "autocast": "no", "compute_4bit": "bf16", "device": "cpu",
                       "reason": "CPU: fp32 weights, no autocast; weights fp32, autocast no, 4-bit compute bf16"}
    assert "precision: CPU: fp32 weights" in caplog.text


def test_live_callback_takes_a_padless_tokenizer_and_a_chat_template(tmp_path, tiny_model):
    """A tokenizer without a pad token (Llama-3 in a plain Trainer) gets its EOS token when the callback is
    made; prompt_format="chat" scores through the tokenizer's chat template; a bad format fails at once."""
    from transformers import AutoTokenizer

    from premem_kit.models import loading as models
    from premem_kit.tasks import data
    from premem_kit.training.callbacks import LivePreMemCallback

    cfg = tiny_cfg(tiny_model, tmp_path / "unused")
    exs = data.train_examples(cfg)[:2]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.pad_token = None
    assert tok.pad_token is None
    plain = LivePreMemCallback(exs, tok, "gsm8k", samples=1, max_new_tokens=4)
    assert tok.pad_token == tok.eos_token == "</s>"
    assert [e["prompt"] for e in plain.examples] == [e["prompt"] for e in exs]
    with pytest.raises(ValueError, match="no chat template"):
        LivePreMemCallback(exs, tok, "gsm8k", prompt_format="chat")
    tok.chat_template = "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    chat = LivePreMemCallback(exs, tok, "gsm8k", samples=1, max_new_tokens=4, prompt_format="chat")
    assert [e["prompt"] for e in chat.examples] == [f"<s>[user] {e['question']}\n[assistant]" for e in exs]
    model = models.load_base_model(cfg)
    row_plain, row_chat = plain.score(model, 1, 1.0), chat.score(model, 1, 1.0)
    assert all(math.isfinite(p) for p in row_plain["ppl"] + row_chat["ppl"])
    assert row_plain["ppl"] != row_chat["ppl"]  # the same targets after other prompts
    with pytest.raises(ValueError, match="expected 'plain', 'chat' or a function"):
        LivePreMemCallback(exs, tok, "gsm8k", prompt_format="alpaca")


@pytest.mark.parametrize("kind", ["empty folder", "fake gguf"])
def test_a_model_that_is_not_one_is_a_clean_error_before_anything_is_written(tmp_path, tiny_model, kind, capsys):
    import train

    model = tmp_path / "m"
    if kind == "empty folder":
        model.mkdir()
    else:
        model = tmp_path / "m.gguf"
        model.write_bytes(b"not a gguf file")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "run", model=str(model))))
    assert train.main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{model}: the tokenizer does not load" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
