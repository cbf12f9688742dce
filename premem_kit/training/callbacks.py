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
prompt_format="chat" scores each question through the tokenizer's chat template (a user turn with the
question, then the generation prompt) instead of the authors' plain `question + "\nAnswer:"`; any function
example -> prompt text works too. A tokenizer without a pad token gets its EOS token as pad token when the
callback is made (the kit's one pad policy), not at the first save. Under several processes (accelerate,
torchrun) each process scores its share of the examples and process 0 logs the whole.
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
from premem_kit.core.parallel import gather_rows

log = logging.getLogger("live_premem")


class LivePreMemCallback(TrainerCallback):
    def __init__(self, examples: list[dict], tokenizer, task: str, *, threshold_loglog: float | None = None,
                 samples: int = 4, temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 256,
                 batch_size: int | None = None, ppl_batch_size: int = 16, max_length: int | None = None,
                 seed: int = 2, history_path=None, prompt_format="plain"):
        if tokenizer.pad_token is None:  # batched sampling needs one; found now, not after an epoch
            if tokenizer.eos_token is None:
                raise ValueError("LivePreMemCallback: the tokenizer has neither a pad nor an EOS token; set "
                                 "tokenizer.pad_token before making the callback")
            tokenizer.pad_token = tokenizer.eos_token
        self.format = prompt_formatter(prompt_format, tokenizer)
        self.examples = [{**e, "prompt": self.format(e)} for e in examples]
        self.tok, self.task = tokenizer, task
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

    def score(self, model, step: int, epoch: float | None, rank: int = 0, world: int = 1) -> dict:
        """Score the subsample with `model` (this process's share of it when world > 1) and return this
        checkpoint's row, the same on every process."""
        exs = self.examples
        mine = list(range(rank, len(exs), world))
        scored = score_examples(model, self.tok, [exs[i] for i in mine], [exs[i]["prompt"] for i in mine],
                                self.sampling, perplexity=True, desc=f"live PreMemAcc step {step}", progress=False)
        shares = gather_rows([{"i": i, "acc": s.accuracy, "ppl": s.perplexity} for i, s in zip(mine, scored)], world)
        by_i = {r["i"]: r for r in shares}
        acc = [by_i[i]["acc"] for i in range(len(exs))]
        ppl = [by_i[i]["ppl"] for i in range(len(exs))]
        hist = [h for h in self.history(step) if h["ids"] == [e["id"] for e in exs]]
        A = np.array([h["acc"] for h in hist] + [acc], dtype=float)
        P = np.array([h["ppl"] for h in hist] + [ppl], dtype=float)
        predicted = metric.predicted_test_accuracy(A, P, threshold_loglog=self.threshold)[-1]
        row = {"step": step, "epoch": epoch, "train_acc": float(np.mean(acc)),
               "predicted_test_acc": float(predicted),
               "memorized": float(np.mean(metric.loglog(P[-1]) < self.threshold)),
               "ids": [e["id"] for e in exs], "acc": acc, "ppl": ppl}
        if self.path is not None and rank == 0:
            lines = [json.dumps(h) for h in hist] + [json.dumps(row)]
            atomic_write_text(self.path, "".join(x + "\n" for x in lines))
        self.rows = hist + [row]
        return row

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        row = self.score(model, state.global_step, state.epoch, args.process_index, args.world_size)
        if not state.is_world_process_zero:
            return
        log.info("step %d: live train accuracy %.3f, predicted test accuracy (PreMemAcc) %.3f, memorized %.2f",
                 row["step"], row["train_acc"], row["predicted_test_acc"], row["memorized"])
        if self.trainer is not None:
            self.trainer.log({"premem/predicted_test_acc": row["predicted_test_acc"],
                              "premem/train_acc": row["train_acc"], "premem/memorized": row["memorized"]})


def prompt_formatter(prompt_format, tokenizer):
    """example -> prompt: "plain" (the example's own prompt, the authors' format), "chat" (the tokenizer's
    chat template around the question), or a function of the example."""
    if callable(prompt_format):
        return prompt_format
    if prompt_format == "plain":
        return lambda e: e["prompt"]
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("LivePreMemCallback: prompt_format='chat' but the tokenizer has no chat template")
        return lambda e: tokenizer.apply_chat_template([{"role": "user", "content": e["question"]}],
                                                       add_generation_prompt=True, tokenize=False)
    raise ValueError(f"LivePreMemCallback: prompt_format {prompt_format!r}: expected 'plain', 'chat' or a function")
