"""GPU-hours per paper run (and per grid): ESTIMATED from assumptions, or computed from a GPU benchmark.

    python bench/cost_estimate.py [--train-tok-s 2000] [--gen-tok-s 2000] [--train-examples N] [--grids]
    python bench/cost_estimate.py --measured bench/results/gpu_<gpu>_<date>.json [--train-examples N]

Without --measured every figure is an ESTIMATE (nothing here was measured on a GPU):
Training: tokens per run (examples x tokens per example x epochs) divided by an assumed H100 QLoRA
training throughput (--train-tok-s, tokens/s; 2,000 is our assumption for an 8B model in 4-bit with
gradient checkpointing and the HF Trainer, about 10% of the H100's bf16 peak at 6 FLOPs x parameters per
token); other GPUs scale by their dense bf16 peak.
Evaluation: generated tokens per checkpoint (examples x 5 samples x an assumed 150 generated tokens for
GSM8K, 300 for MATH) divided by an assumed H100 batched HF-generate throughput with 4-bit weights
(--gen-tok-s); other GPUs scale by memory bandwidth (decoding is bandwidth-bound). Every checkpoint (one per
epoch) and the base model (step 0) are evaluated, train examples of the run and the whole test set.
Tokens per example come from characters / 4 over ../shared/data/gsm8k (GSM8K: 136); MATH: 300 assumed.
--grids adds the sum over each paper grid (grids/*.yaml; Gemma2-9B scaled by parameters, 9.24 / 8.03).

With --measured JSON (written by bench/bench_gpu.py on a GPU), per model in it (llama3_8b, gemma2_9b):
training = examples x epochs / the QLoRA examples/s measured with gradient checkpointing with the task's
recipe (configs/recipes/<model>_<task>.yaml: its micro batch, optimizer, learning rate), at 256 tokens for
GSM8K (a micro batch of GSM8K examples is padded to its longest, ~230 tokens) and at the MATH recipes'
max_length, 1,024 tokens at micro batch 4, for MATH (every micro batch padded to max_length: an upper bound,
since a MATH micro batch is padded only to its longest example); evaluation per checkpoint = generated tokens / the 4-bit + LoRA
sampling tokens/s at the largest batch measured, plus prompt-and-target tokens / the 4-bit perplexity
tokens/s. Figures for the GPU it ran on are marked m (measured there); other GPUs are scaled from it
(training by dense bf16 peak, evaluation by memory bandwidth) and marked e, as is any part that was not
measured (the assumptions above are used for it; m/e = training measured, evaluation estimated). Token
counts per example and generated tokens per sample are the same assumptions in both modes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GPUS = {  # name: (dense bf16 TFLOP/s, memory bandwidth TB/s), vendor data sheets
    "H100 SXM": (989, 3.35), "A100 80GB": (312, 2.0), "L4": (121, 0.3), "A10G": (125, 0.6),
}
# CUDA device names -> (key, dense bf16 TFLOP/s, memory bandwidth TB/s), vendor data sheets; the first
# entry whose substrings all occur in the name wins (so the order matters: GH200 before H200, L40S before L4).
GPU_SPECS = [
    (("GH200", "144G"), "GH200 144GB", 989, 4.9),
    (("GH200",), "GH200", 989, 4.0),
    (("H200",), "H200", 989, 4.8),
    (("H100", "PCIE"), "H100 PCIe", 756, 2.0),
    (("H100", "NVL"), "H100 NVL", 835, 3.9),
    (("H100",), "H100 SXM", 989, 3.35),  # "NVIDIA H100 80GB HBM3"
    (("A100", "80GB", "PCIE"), "A100 80GB PCIe", 312, 1.935),
    (("A100", "80GB"), "A100 80GB", 312, 2.0),
    (("A100",), "A100 40GB", 312, 1.555),
    (("L40S",), "L40S", 362, 0.864),
    (("L40",), "L40", 181, 0.864),
    (("L4",), "L4", 121, 0.3),
    (("A10G",), "A10G", 125, 0.6),
    (("T4",), "T4", 65, 0.32),
]
TASKS = {  # train examples, test examples, tokens per train example, generated tokens per sample
    "gsm8k": (7473, 1319, 136, 150),
    "math": (7500, 5000, 300, 300),
}
RUNS = [(1, "full"), (3, "full"), (6, "full"), (6, "half"), (12, "quarter")]
FRAC = {"full": 1.0, "half": 0.5, "quarter": 0.25}
TRAIN_SEQ = {"gsm8k": 256, "math": 1024}  # padded micro-batch length whose measured step time is used
BENCH_MODELS = {"llama3_8b": "llama3-8b", "gemma2_9b": "gemma2-9b"}  # bench_gpu name -> grids' model_name
PARAMS_B = {"llama3-8b": 8.03, "gemma2-9b": 9.24}


def gpu_spec(name: str):
    """(key, dense bf16 TFLOP/s, TB/s) for a CUDA device name (or a key of GPUS), None if unknown."""
    u = (name or "").upper()
    for subs, key, tf, bw in GPU_SPECS:
        if u and all(s in u for s in subs):
            return key, tf, bw
    return None


def run_hours(task, epochs, size, train_tok_s, gen_tok_s, train_eval_examples=None, samples=5):
    n_train, n_test, tok_ex, gen = TASKS[task]
    n = n_train * FRAC[size]
    train_h = n * tok_ex * epochs / train_tok_s / 3600
    n_eval_train = min(n, train_eval_examples) if train_eval_examples else n
    per_ckpt = (n_eval_train + n_test) * samples * gen / gen_tok_s / 3600
    return train_h, per_ckpt * (epochs + 1)


def paper_grids(root=ROOT) -> list[dict]:
    """The paper's grids (grids/*.yaml of a model in PARAMS_B): name, model, task, [(epochs, subset)]."""
    import yaml

    out = []
    for p in sorted((Path(root) / "grids").glob("*.yaml")):
        g = yaml.safe_load(p.read_text()) or {}
        if g.get("model_name") not in PARAMS_B:
            continue
        base = yaml.safe_load((Path(root) / g["base"]).read_text()) or {}
        base.update(g.get("common") or {})
        cells = [(dict(base, **c).get("num_epochs", 3), dict(base, **c).get("subset", "full")) for c in g.get("cells", [])]
        out.append({"name": g.get("name", p.stem), "model": g["model_name"], "task": base.get("task", "gsm8k"),
                    "cells": cells})
    return out


# ----------------------------------------------------------------------------- from a benchmark JSON

def measured_rates(m: dict) -> dict:
    """The benchmark rows a model's cost uses: QLoRA training per task, 4-bit sampling and perplexity."""
    ok = lambda r: r.get("status") == "ok"  # noqa: E731
    out = {"train": {}, "gen": None, "ppl": None}
    for task, seq in TRAIN_SEQ.items():
        rows = [r for r in m.get("qlora", []) if ok(r) and r.get("gradient_checkpointing") and r.get("seq_len") == seq
                and r.get("task", task) == task and r.get("examples_per_s")]  # rows before schema 2 had no task
        if rows:
            out["train"][task] = rows[0]
    s = [r for r in m.get("sampling", []) if ok(r) and r.get("phase") == "4bit" and r.get("tokens_per_s")]
    out["gen"] = max(s, key=lambda r: r["batch"]) if s else None
    p = [r for r in m.get("perplexity", []) if ok(r) and r.get("phase") == "4bit" and r.get("tokens_per_s")]
    out["ppl"] = max(p, key=lambda r: r["batch_size"]) if p else None
    return out


def run_hours_measured(task, epochs, size, rates, train_tok_s, gen_tok_s, train_eval_examples=None, samples=5):
    """(train h, eval h, training measured?, evaluation measured?) on the measured GPU; the assumed
    train_tok_s / gen_tok_s (for that GPU) stand in for what was not measured."""
    n_train, n_test, tok_ex, gen = TASKS[task]
    n = n_train * FRAC[size]
    tr = rates["train"].get(task)
    train_h = (n * epochs / tr["examples_per_s"] if tr else n * tok_ex * epochs / train_tok_s) / 3600
    n_eval = (min(n, train_eval_examples) if train_eval_examples else n) + n_test
    if rates["gen"]:
        per = n_eval * samples * gen / rates["gen"]["tokens_per_s"]
        if rates["ppl"]:
            per += n_eval * tok_ex / rates["ppl"]["tokens_per_s"]
    else:
        per = n_eval * samples * gen / gen_tok_s
    return train_h, per * (epochs + 1) / 3600, tr is not None, rates["gen"] is not None


def _mark(tm: bool, em: bool) -> str:
    return {(True, True): "m", (True, False): "m/e", (False, True): "e/m", (False, False): "e"}[(tm, em)]


def measured_costs(data: dict, train_tok_s=2000.0, gen_tok_s=2000.0, train_examples=None, root=ROOT) -> dict:
    """Per-run and per-grid GPU-hours from a bench_gpu.py JSON. Returns {"columns", "runs", "grids",
    "rates", "where"}; each figure has its mark (m measured on that GPU, e estimated)."""
    dev = data.get("device") or {}
    name = dev.get("gpu") or dev.get("device") or "unknown device"
    spec = gpu_spec(dev.get("gpu") or "")
    mkey = spec[0] if spec else name
    h100 = GPUS["H100 SXM"]
    # the assumptions, scaled to the measured GPU (unscaled when its peak and bandwidth are unknown)
    tr_ass = train_tok_s * (spec[1] / h100[0] if spec else 1.0)
    gen_ass = gen_tok_s * (spec[2] / h100[1] if spec else 1.0)
    columns = [mkey] + [g for g in GPUS if g != mkey]
    out = {"columns": columns, "runs": [], "grids": [], "rates": {},
           "where": f"{name} ({data.get('machine') or dev.get('machine', '?')}, {data.get('date', '?')})"}
    models = {k: v for k, v in (data.get("models") or {}).items() if k in BENCH_MODELS}
    for bench_name, m in models.items():
        rates = measured_rates(m)
        out["rates"][bench_name] = rates
        scale = PARAMS_B[BENCH_MODELS[bench_name]] / 8.03

        def cells(task, e, size):
            t, ev, tm, em = run_hours_measured(task, e, size, rates, tr_ass / scale, gen_ass / scale, train_examples)
            row = {}
            for g in columns:
                if g == mkey:
                    row[g] = (t, ev, _mark(tm, em))
                elif spec:
                    tf, bw = GPUS[g]
                    row[g] = (t * spec[1] / tf, ev * spec[2] / bw, "e")
                else:  # unknown measured device: the assumptions for the other GPUs
                    tg, eg = run_hours(task, e, size, train_tok_s / scale, gen_tok_s / scale, train_examples)
                    row[g] = (tg * h100[0] / GPUS[g][0], eg * h100[1] / GPUS[g][1], "e")
            return row

        for task in TASKS:
            for e, size in RUNS:
                out["runs"].append({"model": bench_name, "task": task, "run": f"{e} ep {size}", "cells": cells(task, e, size)})
        for g in paper_grids(root):
            if g["model"] != BENCH_MODELS[bench_name]:
                continue
            tot = {}
            for e, size in g["cells"]:
                for col, (t, ev, mk) in cells(g["task"], e, size).items():
                    a, b, marks = tot.get(col, (0.0, 0.0, set()))
                    tot[col] = (a + t, b + ev, marks | {mk})
            out["grids"].append({"grid": g["name"], "model": bench_name, "runs": len(g["cells"]),
                                 "cells": {c: (a, b, next(iter(mk)) if len(mk) == 1 else "e") for c, (a, b, mk) in tot.items()}})
    return out


def _cell(t, ev, mark=None) -> str:
    return f"{t:.1f} + {ev:.1f} = {t + ev:.1f}" + (f" {mark}" if mark else "")


def print_measured(path, a) -> int:
    data = json.loads(Path(path).read_text())
    c = measured_costs(data, a.train_tok_s, a.gen_tok_s, a.train_examples)
    if not c["rates"]:
        print(f"{path}: no paper model measured (models: {', '.join(data.get('models') or {}) or 'none'}); "
              f"the costs need llama3_8b or gemma2_9b")
        return 2
    print(f"GPU-hours per run (train + evaluate), QLoRA, from the benchmark {path}")
    print(f"m = computed from throughput measured on {c['where']}; e = estimated: scaled from it by dense bf16 "
          f"peak (training) and memory bandwidth (evaluation), or assumed where not measured "
          f"(m/e: training measured, evaluation estimated)")
    for name, r in c["rates"].items():
        parts = []
        for task, row in r["train"].items():
            parts.append(f"training {row['examples_per_s']:.2f} examples/s at {row['seq_len']} tokens x micro batch "
                         f"{row['micro_batch']} ({task}) [m]")
        missing = [t for t in TASKS if t not in r["train"]]
        if missing:
            parts.append(f"training for {', '.join(missing)}: assumed {a.train_tok_s:.0f} tok/s on an H100 [e]")
        parts.append(f"generation {r['gen']['tokens_per_s']:.0f} tok/s at batch {r['gen']['batch']}, {r['gen']['weights']} [m]"
                     if r["gen"] else f"generation: assumed {a.gen_tok_s:.0f} tok/s on an H100 [e]")
        if r["ppl"]:
            parts.append(f"perplexity {r['ppl']['tokens_per_s']:.0f} tok/s at batch {r['ppl']['batch_size']} [m]")
        print(f"{name}: " + "; ".join(parts))
    print("tokens per example (GSM8K 136, MATH 300) and generated tokens per sample (150, 300) are assumptions"
          + (f"; train evaluation on {a.train_examples} examples" if a.train_examples else ""))
    cols = c["columns"]
    print("| model | task | run | " + " | ".join(f"{g} (train + eval = total)" for g in cols) + " |")
    print("|" + "---|" * (3 + len(cols)))
    for r in c["runs"]:
        print(f"| {r['model']} | {r['task']} | {r['run']} | " + " | ".join(_cell(*r["cells"][g]) for g in cols) + " |")
    if c["grids"]:
        print("\nGPU-hours per grid (sum of its runs):")
        print("| grid | model | runs | " + " | ".join(cols) + " |")
        print("|" + "---|" * (3 + len(cols)))
        for g in c["grids"]:
            print(f"| {g['grid']} | {g['model']} | {g['runs']} | " + " | ".join(_cell(*g["cells"][k]) for k in cols) + " |")
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-tok-s", type=float, default=2000.0, help="assumed H100 training tokens/s (8B QLoRA)")
    ap.add_argument("--gen-tok-s", type=float, default=2000.0, help="assumed H100 generated tokens/s (8B 4-bit)")
    ap.add_argument("--train-examples", type=int, help="evaluate a subsample of N train examples (evaluate.py --train-examples)")
    ap.add_argument("--measured", help="a JSON written by bench/bench_gpu.py: compute from its measurements")
    ap.add_argument("--grids", action="store_true", help="also print the sum over each paper grid (always with --measured)")
    a = ap.parse_args(argv)
    if a.measured:
        return print_measured(a.measured, a)
    h100 = GPUS["H100 SXM"]
    print("ESTIMATES, not measurements: GPU-hours per run (train + evaluate), 8B model, QLoRA")
    print(f"assumed on H100: training {a.train_tok_s:.0f} tok/s, generation {a.gen_tok_s:.0f} tok/s"
          + (f"; train evaluation on {a.train_examples} examples" if a.train_examples else ""))
    head = "| task | run | " + " | ".join(f"{g} (train + eval = total)" for g in GPUS) + " |"
    print(head)
    print("|" + "---|" * (2 + len(GPUS)))
    for task in TASKS:
        for e, size in RUNS:
            t, ev = run_hours(task, e, size, a.train_tok_s, a.gen_tok_s, a.train_examples)
            cells = []
            for g, (fl, bw) in GPUS.items():
                tg, eg = t * h100[0] / fl, ev * h100[1] / bw
                cells.append(_cell(tg, eg))
            print(f"| {task} | {e} ep {size} | " + " | ".join(cells) + " |")
    if a.grids:
        print("\nESTIMATES: GPU-hours per grid (sum of its runs; Gemma2-9B scaled by parameters, 9.24 / 8.03):")
        print("| grid | runs | " + " | ".join(f"{g} (train + eval = total)" for g in GPUS) + " |")
        print("|" + "---|" * (2 + len(GPUS)))
        for g in paper_grids():
            s = PARAMS_B[g["model"]] / 8.03
            tot = {k: [0.0, 0.0] for k in GPUS}
            for e, size in g["cells"]:
                t, ev = run_hours(g["task"], e, size, a.train_tok_s / s, a.gen_tok_s / s, a.train_examples)
                for k, (fl, bw) in GPUS.items():
                    tot[k][0] += t * h100[0] / fl
                    tot[k][1] += ev * h100[1] / bw
            print(f"| {g['name']} | {len(g['cells'])} | " + " | ".join(_cell(*tot[k]) for k in GPUS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
