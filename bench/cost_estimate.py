"""GPU-hours per paper run, ESTIMATED (nothing here was measured on a GPU).

    python bench/cost_estimate.py [--train-tok-s 2000] [--gen-tok-s 2000] [--train-examples N]

Training: tokens per run (examples x tokens per example x epochs) divided by an assumed H100 QLoRA
training throughput (--train-tok-s, tokens/s; 2,000 is our assumption for an 8B model in 4-bit with
gradient checkpointing and the HF Trainer, about 10% of the H100's bf16 peak at 6 FLOPs x parameters per
token); other GPUs scale by their dense bf16 peak.
Evaluation: generated tokens per checkpoint (examples x 5 samples x an assumed 150 generated tokens for
GSM8K, 300 for MATH) divided by an assumed H100 batched HF-generate throughput with 4-bit weights
(--gen-tok-s); other GPUs scale by memory bandwidth (decoding is bandwidth-bound). Every checkpoint (one per
epoch) and the base model (step 0) are evaluated, train examples of the run and the whole test set.
Tokens per example come from characters / 4 over ../shared/data/gsm8k (GSM8K: 136); MATH: 300 assumed.
"""
from __future__ import annotations

import argparse

GPUS = {  # name: (dense bf16 TFLOP/s, memory bandwidth TB/s), vendor data sheets
    "H100 SXM": (989, 3.35), "A100 80GB": (312, 2.0), "L4": (121, 0.3), "A10G": (125, 0.6),
}
TASKS = {  # train examples, test examples, tokens per train example, generated tokens per sample
    "gsm8k": (7473, 1319, 136, 150),
    "math": (7500, 5000, 300, 300),
}
RUNS = [(1, "full"), (3, "full"), (6, "full"), (6, "half"), (12, "quarter")]
FRAC = {"full": 1.0, "half": 0.5, "quarter": 0.25}


def run_hours(task, epochs, size, train_tok_s, gen_tok_s, train_eval_examples=None, samples=5):
    n_train, n_test, tok_ex, gen = TASKS[task]
    n = n_train * FRAC[size]
    train_h = n * tok_ex * epochs / train_tok_s / 3600
    n_eval_train = min(n, train_eval_examples) if train_eval_examples else n
    per_ckpt = (n_eval_train + n_test) * samples * gen / gen_tok_s / 3600
    return train_h, per_ckpt * (epochs + 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-tok-s", type=float, default=2000.0, help="assumed H100 training tokens/s (8B QLoRA)")
    ap.add_argument("--gen-tok-s", type=float, default=2000.0, help="assumed H100 generated tokens/s (8B 4-bit)")
    ap.add_argument("--train-examples", type=int, help="evaluate a subsample of N train examples (evaluate.py --train-examples)")
    a = ap.parse_args(argv)
    h100 = GPUS["H100 SXM"]
    print("ESTIMATES, not measurements: GPU-hours per run (train + evaluate), 8B model, QLoRA")
    print(f"assumed on H100: training {a.train_tok_s:.0f} tok/s, generation {a.gen_tok_s:.0f} tok/s"
          + (f"; train evaluation on {a.train_examples} examples" if a.train_examples else ""))
    head = "| task | run | " + " | ".join(f"{g} (train + eval = total)" for g in GPUS) + " |"
    print(head)
    print("|" + "---|" * (2 + len(GPUS)))
    for task in TASKS:
        tot = {g: 0.0 for g in GPUS}
        for e, size in RUNS:
            t, ev = run_hours(task, e, size, a.train_tok_s, a.gen_tok_s, a.train_examples)
            cells = []
            for g, (fl, bw) in GPUS.items():
                tg, eg = t * h100[0] / fl, ev * h100[1] / bw
                tot[g] += tg + eg
                cells.append(f"{tg:.1f} + {eg:.1f} = {tg + eg:.1f}")
            print(f"| {task} | {e} ep {size} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
