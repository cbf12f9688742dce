"""Finetune a causal LM on GSM8K or MATH with the papers' recipes (LoRA / QLoRA, HF Trainer).

    python train.py CONFIG [key=value ...]
    python train.py --help-config           # every key, its default and meaning

Writes RUN = cfg.run_dir: config.yaml, subset_ids.json, log.jsonl (loss and learning rate per step),
checkpoint-<step>/ at the end of every epoch (adapter + optimizer/scheduler/RNG state), and
train_summary.json when done. Rerunning the same command after an interruption resumes from the last
complete checkpoint and ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

import config as config_mod
import data as data_mod
from records import atomic_write_json, atomic_write_text

log = logging.getLogger("train")
COMPLETE = ".complete"  # marker written into a checkpoint once it is whole

# Keys that may change between an interrupted run and its resumption (they do not change training).
NON_TRAINING_KEYS = {k for k in config_mod.DEFAULTS if k.startswith("eval_")} | {
    "dataloader_num_workers", "logging_steps", "save_every_steps"}


def dist_state():
    """accelerate's process state. On a machine without a GPU, `accelerate launch --multi_gpu
    --num_processes N` (torchrun underneath) starts N CPU processes; PartialState only joins them into
    one gloo process group when told cpu=True, otherwise each would train alone."""
    import os

    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=cpu) if cpu else PartialState()


def complete_checkpoints(run_dir) -> list[Path]:
    """Checkpoints with the completion marker, sorted by step."""
    out = [p for p in Path(run_dir).glob("checkpoint-*") if (p / COMPLETE).exists()]
    return sorted(out, key=lambda p: int(p.name.split("-")[1]))


def prepare_run_dir(cfg: dict) -> Path:
    """Create the run folder, or check that an existing one was made with the same config."""
    run = Path(cfg["run_dir"])
    saved = run / "config.yaml"
    if saved.exists():
        old = yaml.safe_load(saved.read_text()) or {}
        diff = sorted(k for k in cfg if k not in NON_TRAINING_KEYS and old.get(k, cfg[k]) != cfg[k])
        if diff:
            raise config_mod.ConfigError(
                f"{saved}: this run folder was made with a different config (keys {diff}: "
                + ", ".join(f"{k} {old.get(k)!r} -> {cfg[k]!r}" for k in diff)
                + "). Use another run_dir, or delete the folder to start over.")
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, yaml.safe_dump(cfg, sort_keys=False))
    return run


def build_trainer(cfg: dict, run: Path, examples: list[dict], tok, model, world_size: int = 1):
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    import models

    feats = [data_mod.encode(tok, e["prompt"], e["target"], cfg["max_length"]) for e in examples]
    cut = sum(1 for f, e in zip(feats, examples)
              if sum(1 for x in f["labels"] if x != -100) < len(tok(e["target"], add_special_tokens=False)["input_ids"]))
    if cut:
        log.warning("%d of %d targets were cut at max_length=%d", cut, len(feats), cfg["max_length"])

    accum = cfg["batch_size"] // (cfg["micro_batch_size"] * world_size)
    if accum < 1 or cfg["batch_size"] % (cfg["micro_batch_size"] * world_size):
        raise config_mod.ConfigError(
            f"batch_size {cfg['batch_size']} is not a multiple of micro_batch_size {cfg['micro_batch_size']} "
            f"x {world_size} processes")
    dtype = models.resolve_dtype(cfg["dtype"])
    on_gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run),
        per_device_train_batch_size=cfg["micro_batch_size"],
        gradient_accumulation_steps=accum,
        num_train_epochs=cfg["num_epochs"],
        learning_rate=cfg["learning_rate"],
        lr_scheduler_type=cfg["lr_scheduler"],
        # transformers 5: a float in (0, 1) is a ratio of all steps
        warmup_steps=cfg["warmup_ratio"] if cfg["warmup_ratio"] else cfg["warmup_steps"],
        weight_decay=cfg["weight_decay"] if cfg["optimizer"] == "adamw" else 0.0,
        optim="adamw_torch",
        max_grad_norm=cfg["max_grad_norm"],
        logging_steps=cfg["logging_steps"],
        save_strategy="epoch",
        save_total_limit=None,
        seed=cfg["seed"],
        data_seed=cfg["seed"],
        bf16=on_gpu and dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        activation_checkpointing=cfg["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg["gradient_checkpointing"] else None,
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=cfg["dataloader_num_workers"],
        dataloader_pin_memory=on_gpu,
        use_cpu=not on_gpu and world_size > 1,  # CPU processes under accelerate launch: gloo (see dist_state)
        disable_tqdm=False,
    )

    class RunFiles(TrainerCallback):
        """Per-step log, extra checkpoints every N steps, completion markers."""

        def on_step_end(self, args, state, control, **kw):
            n = cfg["save_every_steps"]
            if n and state.global_step % n == 0:
                control.should_save = True

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "loss": logs["loss"],
                       "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                       "time": time.time()}
                with open(run / "log.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                ck = run / f"checkpoint-{state.global_step}"
                atomic_write_json(ck / COMPLETE, {"step": state.global_step, "epoch": state.epoch})

    callbacks = [RunFiles()]
    if cfg["live_premem"]:
        callbacks.insert(0, LivePreMem(cfg, run, examples, tok, model))
    trainer = Trainer(model=model, args=args, train_dataset=feats,
                      data_collator=data_mod.Collator(tok.pad_token_id), callbacks=callbacks)
    return trainer, tok


def _live_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class LivePreMem(_live_callback_base()):
    """At every checkpoint: accuracy of a few samples and target perplexity on a fixed, seeded train
    subsample; the running PreMemAcc over the checkpoints so far is the predicted test accuracy.

    One line per checkpoint goes to RUN/live_premem.jsonl (step, epoch, train_acc, predicted_test_acc,
    memorized fraction, and the per-example arrays so a resumed run continues the running max).
    """

    def __init__(self, cfg, run, examples, tok, model):
        self.cfg, self.run, self.tok, self.model = cfg, Path(run), tok, model
        ids = data_mod.sample_ids([e["id"] for e in examples], cfg["live_premem_examples"], cfg["seed"])
        keep = set(ids)
        self.examples = [e for e in examples if e["id"] in keep]
        self.path = self.run / "live_premem.jsonl"

    def history(self, upto_step):
        if not self.path.exists():
            return []
        rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        return [r for r in rows if r["step"] < upto_step]

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        import grading
        import inference
        import numpy as np
        import premem

        c, exs = self.cfg, self.examples
        comps, _ = inference.sample(self.model, self.tok, [e["prompt"] for e in exs], n=c["live_premem_samples"],
                                    temperature=c["eval_temperature"], top_p=c["eval_top_p"],
                                    max_new_tokens=c["live_premem_max_new_tokens"], batch_size=c["eval_batch_size"],
                                    seed=c["eval_seed"], desc=f"live PreMemAcc step {state.global_step}")
        acc = [sum(grading.grade(c["task"], s, e["reference"])[1] == "correct" for s in cs) / len(cs)
               for cs, e in zip(comps, exs)]
        ppl, _ = inference.perplexities(self.model, self.tok, [e["prompt"] for e in exs], [e["target"] for e in exs],
                                        batch_size=c["eval_ppl_batch_size"], max_length=c["max_length"],
                                        progress=False)
        hist = self.history(state.global_step)
        A = np.array([h["acc"] for h in hist] + [acc], dtype=float)
        P = np.array([h["ppl"] for h in hist] + [ppl], dtype=float)
        pm = premem.premem_from_arrays(A, P, threshold_loglog=c["live_premem_threshold"])
        row = {"step": state.global_step, "epoch": state.epoch, "train_acc": float(np.mean(acc)),
               "predicted_test_acc": float(pm[-1].mean()),
               "memorized": float(np.mean(premem.loglog(P[-1]) < c["live_premem_threshold"])),
               "ids": [e["id"] for e in exs], "acc": acc, "ppl": ppl}
        lines = [json.dumps(h) for h in hist] + [json.dumps(row)]
        atomic_write_text(self.path, "".join(x + "\n" for x in lines))
        log.info("step %d: live train accuracy %.3f, predicted test accuracy (PreMemAcc) %.3f, memorized %.2f",
                 state.global_step, row["train_acc"], row["predicted_test_acc"], row["memorized"])


def run_training(cfg: dict) -> dict:
    """Train (or resume, or skip when already done). Returns train_summary.json's content."""
    state = dist_state()
    run = Path(cfg["run_dir"])
    summary_path = run / "train_summary.json"
    if summary_path.exists():
        log.info("%s is already trained (train_summary.json exists); nothing to do", run)
        return json.loads(summary_path.read_text())

    # Everything that can fail on bad input (data, model) happens before the run folder is touched.
    import models

    from transformers import set_seed

    examples = data_mod.train_examples(cfg)
    set_seed(cfg["seed"])  # LoRA's initial weights come from the global RNG
    tok, model = models.load_for_training(cfg)
    if state.is_main_process:
        prepare_run_dir(cfg)
        atomic_write_json(run / "subset_ids.json", [e["id"] for e in examples])
    state.wait_for_everyone()

    # Resume from the last complete checkpoint; anything after it (a half-written checkpoint, log
    # lines of steps that will be redone) is removed.
    ckpts = complete_checkpoints(run)
    resume = ckpts[-1] if ckpts else None
    if state.is_main_process:
        last = int(resume.name.split("-")[1]) if resume else 0
        for p in run.glob("checkpoint-*"):
            if not (p / COMPLETE).exists():
                log.warning("removing incomplete checkpoint %s", p)
                shutil.rmtree(p)
        logf = run / "log.jsonl"
        if logf.exists():
            keep = [ln for ln in logf.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last]
            atomic_write_text(logf, "".join(x + "\n" for x in keep))
    state.wait_for_everyone()
    if resume:
        log.info("resuming from %s", resume)

    trainer, _ = build_trainer(cfg, run, examples, tok, model, world_size=state.num_processes)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    dt = time.time() - t0
    steps_done = trainer.state.global_step - (int(resume.name.split("-")[1]) if resume else 0)
    summary = {
        "run_dir": str(run), "examples": len(examples), "epochs": cfg["num_epochs"],
        "optimizer_steps": trainer.state.global_step,
        "steps_per_epoch": math.ceil(trainer.state.max_steps / max(cfg["num_epochs"], 1e-9)),
        "final_train_loss": result.training_loss,
        "seconds_this_session": round(dt, 2),
        "seconds_per_step_this_session": round(dt / max(steps_done, 1), 3),
        "checkpoints": [p.name for p in complete_checkpoints(run)],
        "processes": state.num_processes,
    }
    if state.is_main_process:
        atomic_write_json(summary_path, summary)
    return summary


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="YAML config (see configs/)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=1e-4")
    ap.add_argument("--help-config", action="store_true", help="list every config key and exit")
    a = ap.parse_args(argv)
    if a.help_config:
        print(config_mod.describe())
        return 0
    if not a.config:
        ap.error("a CONFIG file is required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = config_mod.load_config(a.config, a.overrides)
    except (config_mod.ConfigError, data_mod.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        s = run_training(cfg)
    except (config_mod.ConfigError, data_mod.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        import models
        if isinstance(e, models.ModelError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(s, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
