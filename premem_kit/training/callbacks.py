"""Live PreMemAcc: a `transformers.TrainerCallback` that predicts test accuracy while training.

At every checkpoint it samples a fixed train subsample, grades the samples and computes the targets'
perplexity (the same `score_examples` path as evaluate.py), and logs the running mean PreMemAcc as
the predicted test accuracy, through the Trainer's own loggers (`report_to`: TensorBoard, W&B, ...)
as `premem/predicted_test_acc`, `premem/train_acc` and `premem/memorized`, and, when given a
path, as one JSON line per checkpoint (so a resumed run continues the running max).

Works on any HF `Trainer` or TRL `SFTTrainer`:

    cb = LivePreMemCallback(examples, tokenizer, task="gsm8k")
    trainer = Trainer(model=model, args=args, train_dataset=ds)
    cb.attach(trainer)          # adds the callback and lets it log through trainer.log
    trainer.train()

`examples` are dicts with prompt, target, question and reference (data.load_split gives them).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from transformers import TrainerCallback

from premem_kit import metric
from premem_kit.evaluation.evaluation import Sampling, score_examples
from premem_kit.core.files import atomic_write_text

log = logging.getLogger("live_premem")


class LivePreMemCallback(TrainerCallback):
    def __init__(self, examples: list[dict], tokenizer, task: str, *, threshold_loglog: float | None = None,
                 samples: int = 4, temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 256,
                 batch_size: int = 32, ppl_batch_size: int = 16, max_length: int | None = None,
                 seed: int = 2, history_path=None):
        self.examples, self.tok, self.task = list(examples), tokenizer, task
        if threshold_loglog is None:  # the authors' value for the task: GSM8K -2.3, MATH -1.7
            if task not in metric.TASK_THRESHOLDS:
                raise ValueError(f"no default memorization threshold for task {task!r}; give threshold_loglog")
            threshold_loglog = metric.TASK_THRESHOLDS[task]
        self.threshold = float(threshold_loglog)
        self.sampling = Sampling(task=task, samples=samples, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                 ppl_batch_size=ppl_batch_size, max_length=max_length)
        self.path = Path(history_path) if history_path else None
        self.rows: list[dict] = []  # one per checkpoint scored in this process
        self.trainer = None

    def attach(self, trainer) -> "LivePreMemCallback":
        """Add this callback to `trainer` and log through `trainer.log` (so `report_to` sees it)."""
        trainer.add_callback(self)
        self.trainer = trainer
        return self

    def history(self, before_step: int) -> list[dict]:
        """Earlier checkpoints' rows: from the history file when there is one (resume), else memory."""
        rows = self.rows
        if self.path is not None and self.path.exists():
            rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        return [r for r in rows if r["step"] < before_step]

    def score(self, model, step: int, epoch: float | None) -> dict:
        """Score the subsample with `model` and return this checkpoint's row."""
        exs = self.examples
        scored = score_examples(model, self.tok, exs, [e["prompt"] for e in exs], self.sampling, perplexity=True,
                                desc=f"live PreMemAcc step {step}", progress=False)
        acc = [s.accuracy for s in scored]
        ppl = [s.perplexity for s in scored]
        hist = [h for h in self.history(step) if h["ids"] == [e["id"] for e in exs]]
        A = np.array([h["acc"] for h in hist] + [acc], dtype=float)
        P = np.array([h["ppl"] for h in hist] + [ppl], dtype=float)
        predicted = metric.predicted_test_accuracy(A, P, threshold_loglog=self.threshold)[-1]
        row = {"step": step, "epoch": epoch, "train_acc": float(np.mean(acc)),
               "predicted_test_acc": float(predicted),
               "memorized": float(np.mean(metric.loglog(P[-1]) < self.threshold)),
               "ids": [e["id"] for e in exs], "acc": acc, "ppl": ppl}
        if self.path is not None:
            lines = [json.dumps(h) for h in hist] + [json.dumps(row)]
            atomic_write_text(self.path, "".join(x + "\n" for x in lines))
        self.rows = hist + [row]
        return row

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        row = self.score(model, state.global_step, state.epoch)
        log.info("step %d: live train accuracy %.3f, predicted test accuracy (PreMemAcc) %.3f, memorized %.2f",
                 row["step"], row["train_acc"], row["predicted_test_acc"], row["memorized"])
        if self.trainer is not None:
            self.trainer.log({"premem/predicted_test_acc": row["predicted_test_acc"],
                              "premem/train_acc": row["train_acc"], "premem/memorized": row["memorized"]})
