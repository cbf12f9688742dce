"""Finetuning with the HF Trainer: LoRA / QLoRA or full finetuning, a checkpoint per epoch, resume.

`run_training(cfg)` trains (or resumes, or returns at once when the run is done). Everything that can
fail on bad input (config, data, model) is checked before the run folder is touched. A checkpoint
gets a `.complete` marker once it is whole; on resume the kit deletes only the unfinished checkpoint
folders it marked as being written itself (`checkpoint-<step>.saving`), never other folders.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path


from premem_kit.core import config as config_mod
from premem_kit.core.config import Config
from premem_kit.tasks import data as data_mod
from premem_kit.core import runs
from premem_kit.core.files import (FileLock, append_jsonl, atomic_write_json, atomic_write_text, raise_unwritable,
                                   read_jsonl, write_jsonl)

log = logging.getLogger("train")

# Keys that may change between an interrupted run and its resumption (they do not change training); the
# run folder's own path is one, so a folder that was moved, copied or reached through a link resumes.
NON_TRAINING_KEYS = set(config_mod.EVAL_KEYS) | {"run_dir", "dataloader_num_workers", "logging_steps",
                                                  "save_every_steps", "report_to"}
# TensorBoard events go to RUN/tensorboard unless the user set the Trainer's own variable for it
USER_TENSORBOARD_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")


# config `optimizer` -> the Trainer's `optim` (the HF Trainer builds each from its maintained library)
OPTIMIZERS = {"adamw": "adamw_torch", "adam": "adamw_torch", "paged_adamw_8bit": "paged_adamw_8bit"}


def saving_marker(run, step: int) -> Path:
    """Written just before the Trainer writes checkpoint-<step>; removed once it is complete."""
    return Path(run) / f"checkpoint-{int(step)}.saving"


def check_run_dir(cfg: Config) -> Path:
    """Refuse a folder that is not this run's: another config, or files the kit did not write."""
    run = Path(cfg.run_dir)
    if run.exists() and not run.is_dir():
        raise config_mod.ConfigError(f"run_dir {run} is a file, expected a folder")
    saved = runs.config_path(run)
    if saved.exists():
        old, new = config_mod.to_dict(runs.read_config(run)), config_mod.to_dict(cfg)
        diff = sorted(k for k in new if k not in NON_TRAINING_KEYS and old[k] != new[k])
        if diff:
            raise config_mod.ConfigError(
                f"{saved}: this run folder was made with a different config (keys {diff}: "
                + ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in diff)
                + "). Use another run_dir, or delete the folder to start over.")
    elif run.is_dir() and any(p.name != runs.LOCK for p in run.iterdir()):
        raise config_mod.ConfigError(
            f"run_dir {run} exists, is not empty and has no config.yaml: it is not a run folder made by "
            f"train.py. Pick a new or empty run_dir.")
    return run


def clean_for_resume(run: Path) -> Path | None:
    """The last complete checkpoint (None: start fresh). Removes the unfinished checkpoints this kit
    was writing and the log lines of steps that will be redone."""
    ckpts = runs.complete_checkpoints(run)
    resume = ckpts[-1] if ckpts else None
    last = runs.checkpoint_step(resume) if resume else 0
    for p in runs.checkpoint_folders(run):
        if runs.is_complete(p):
            continue
        marker = saving_marker(run, runs.checkpoint_step(p))
        if marker.exists():
            log.warning("removing unfinished checkpoint %s", p)
            shutil.rmtree(p)
            marker.unlink()
        else:
            log.warning("leaving %s alone: it has no .complete marker and was not written by this kit", p)
    logf = runs.log_path(run)
    if logf.exists():
        keep = [r for r in read_jsonl(logf, torn_tail="drop") if r.get("step", 0) <= last]
        write_jsonl(logf, keep)
    return resume


def accumulation_steps(cfg: Config, world_size: int) -> int:
    """Gradient accumulation that keeps the effective batch at batch_size over world_size processes."""
    per_step = cfg.micro_batch_size * world_size
    if cfg.batch_size % per_step:
        raise config_mod.ConfigError(
            f"batch_size {cfg.batch_size} must be a multiple of micro_batch_size {cfg.micro_batch_size} "
            f"x {world_size} process(es)")
    return cfg.batch_size // per_step


def training_arguments(cfg: Config, run: Path, world_size: int):
    """The TrainingArguments of a config (the papers' recipes map onto them one to one)."""
    import torch
    from transformers import TrainingArguments

    from premem_kit.models import loading as models

    accum = accumulation_steps(cfg, world_size)
    on_gpu = torch.cuda.is_available()
    mp = models.precision_of(cfg).autocast
    gc = cfg.gradient_checkpointing
    return TrainingArguments(
        output_dir=str(run), per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accum, num_train_epochs=cfg.num_epochs,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5: a float in (0, 1) is a ratio of all steps
        warmup_steps=cfg.warmup_ratio if cfg.warmup_ratio else cfg.warmup_steps,
        weight_decay=0.0 if cfg.optimizer == "adam" else cfg.weight_decay,
        optim=OPTIMIZERS[cfg.optimizer], max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        save_strategy="epoch", save_total_limit=None, seed=cfg.seed, data_seed=cfg.seed,
        bf16=on_gpu and mp == "bf16", fp16=on_gpu and mp == "fp16",
        # gradient_checkpointing (not 5.23's activation_checkpointing alias): the same on every transformers 5.x
        gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        remove_unused_columns=False, report_to=cfg.report_to, dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=on_gpu,
        use_cpu=not on_gpu and world_size > 1,  # CPU processes under accelerate launch: gloo (parallel.py)
        disable_tqdm=False)


def run_files_callback(cfg: Config, run: Path):
    """Per-step log lines, extra checkpoints every N steps, and the checkpoint markers."""
    from transformers import TrainerCallback

    class RunFiles(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            n = cfg.save_every_steps
            if n and state.global_step % n == 0:
                control.should_save = True
            self._mark(state, control)

        def on_epoch_end(self, args, state, control, **kw):
            self._mark(state, control)

        def _mark(self, state, control):
            if control.should_save and state.is_world_process_zero:
                atomic_write_text(saving_marker(run, state.global_step), "")

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                append_jsonl(runs.log_path(run), {
                    "step": state.global_step, "epoch": round(state.epoch or 0, 4), "loss": logs["loss"],
                    "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                    "time": time.time()})

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                ck = runs.checkpoint_dir(run, state.global_step)
                atomic_write_json(runs.marker_path(ck), {"step": state.global_step, "epoch": state.epoch})
                saving_marker(run, state.global_step).unlink(missing_ok=True)

    return RunFiles()


def encode_examples(cfg: Config, tok, examples: list[dict]) -> tuple[list[dict], dict]:
    """The examples as model inputs (data.encode: one length policy) and how many max_length cut."""
    feats = [data_mod.encode(tok, e["prompt"], e["target"], cfg.max_length) for e in examples]
    cuts = {"prompts_cut": sum(f["prompt_cut"] for f in feats), "targets_cut": sum(f["target_cut"] for f in feats)}
    if cuts["prompts_cut"]:
        log.warning("%d of %d prompts were longer than max_length - 1 = %d tokens: cut from the left (their end "
                    "and the target's start kept)", cuts["prompts_cut"], len(feats), cfg.max_length - 1)
    if cuts["targets_cut"]:
        log.warning("%d of %d targets were cut at max_length=%d: the loss sees only their start",
                    cuts["targets_cut"], len(feats), cfg.max_length)
    return [{k: f[k] for k in ("input_ids", "labels", "attention_mask")} for f in feats], cuts


def build_trainer(cfg: Config, run: Path, examples: list[dict], tok, model, world_size: int = 1):
    from transformers import Trainer

    if USER_TENSORBOARD_DIR is None:  # inside the run folder, not in a runs/<date>_<host> folder of its own
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run / "tensorboard")

    from premem_kit.training.callbacks import LivePreMemCallback

    feats, cuts = encode_examples(cfg, tok, examples)
    trainer = Trainer(model=model, args=training_arguments(cfg, run, world_size), train_dataset=feats,
                      data_collator=data_mod.Collator(tok.pad_token_id), callbacks=[run_files_callback(cfg, run)])
    trainer.length_cuts = cuts  # for train_summary.json
    if cfg.live_premem:
        sub = data_mod.sample_ids([e["id"] for e in examples], cfg.live_premem_examples, cfg.seed)
        keep = set(sub)
        LivePreMemCallback(
            [e for e in examples if e["id"] in keep], tok, cfg.task,
            threshold_loglog=cfg.live_premem_threshold, samples=cfg.live_premem_samples,
            temperature=cfg.eval_temperature, top_p=cfg.eval_top_p,
            max_new_tokens=cfg.live_premem_max_new_tokens, batch_size=cfg.eval_batch_size,
            ppl_batch_size=cfg.eval_ppl_batch_size, max_length=cfg.max_length, seed=cfg.eval_seed,
            history_path=runs.live_premem_path(run)).attach(trainer)
    return trainer


def run_training(cfg: Config) -> dict:
    """Train (or resume, or skip when already done). Returns train_summary.json's content."""
    from transformers import set_seed

    from premem_kit.models import loading as models
    from premem_kit.core.parallel import dist_state

    state = dist_state()
    run = check_run_dir(cfg)
    accumulation_steps(cfg, state.num_processes)  # before anything is written
    if runs.summary_path(run).exists():
        log.info("%s is already trained (train_summary.json exists); nothing to do", run)
        return json.loads(runs.summary_path(run).read_text())
    examples = data_mod.train_examples(cfg)
    set_seed(cfg.seed)  # LoRA's initial weights come from the global RNG
    tok, model = models.load_for_training(cfg)
    if not state.is_main_process:
        return _train(cfg, run, examples, tok, model, state)
    with FileLock(runs.lock_path(run), f"run folder {run}"):
        check_run_dir(cfg)  # again, under the lock: another process may have started meanwhile
        return _train(cfg, run, examples, tok, model, state)


def _train(cfg, run, examples, tok, model, state) -> dict:
    from premem_kit.models.loading import precision_of

    precision = precision_of(cfg)
    log.info("precision: %s", precision.reason)
    if state.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(runs.config_path(run), config_mod.dump(cfg))
        atomic_write_json(runs.subset_ids_path(run), [e["id"] for e in examples])
        atomic_write_json(runs.subset_hashes_path(run), {e["id"]: data_mod.example_hash(e) for e in examples})
        atomic_write_json(runs.precision_path(run), precision.as_dict())
        resume = clean_for_resume(run)
    state.wait_for_everyone()
    if not state.is_main_process:
        ckpts = runs.complete_checkpoints(run)
        resume = ckpts[-1] if ckpts else None
    if resume:
        log.info("resuming from %s", resume)
    trainer = build_trainer(cfg, run, examples, tok, model, world_size=state.num_processes)
    t0 = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except OSError as e:  # the Trainer writes checkpoints itself: a full disk says so, and resume is exact
        raise_unwritable(e, run)
        raise
    dt = time.time() - t0
    steps_done = trainer.state.global_step - (runs.checkpoint_step(resume) if resume else 0)
    summary = {
        "run_dir": str(run), "examples": len(examples), "epochs": cfg.num_epochs,
        "optimizer_steps": trainer.state.global_step,
        "steps_per_epoch": math.ceil(trainer.state.max_steps / max(cfg.num_epochs, 1e-9)),
        "final_train_loss": result.training_loss,
        "seconds_this_session": round(dt, 2),
        "seconds_per_step_this_session": round(dt / max(steps_done, 1), 3),
        "checkpoints": [p.name for p in runs.complete_checkpoints(run)],
        "processes": state.num_processes,
        **trainer.length_cuts,
    }
    if state.is_main_process:
        atomic_write_json(runs.summary_path(run), summary)
    return summary
