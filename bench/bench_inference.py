"""Benchmark: the kit's evaluation against the way it sampled before and against a plain decode loop, in one run.

    python bench/bench_inference.py [--model pypi:smollm2-135m-instruct] [--run RUN] [--config configs/arith_demo.yaml]
                                    [--train-examples 12] [--test-examples 16] [--skip-before] [--crossover]

Prints, measured in this one run on this machine:
1. decode tokens/s of a plain KV-cache loop (twenty lines of torch: batch B, greedy, no stop) by batch size
   1, 8, 32, 64, 128, and on CPU the FLOP rate that is against torch's measured matmul rate;
2. one checkpoint's evaluation with the demo's settings (sampled train and test questions, train target
   perplexity), before: the GGUF file converted at load, model.generate with eval_batch_size 4 prompts,
   LoRA unmerged (the kit until 2026-12); after: the kit now (cached dequantized copy, the decode loop
   filling 128 sequences, LoRA merged). Load, sampling and perplexity seconds, and the ratio;
3. the kit's end-to-end tokens/s (generated tokens over the whole evaluation, model load and perplexity
   included) as a fraction of the plain loop's at batch 64 and 128 (target >= 40%);
4. perplexity batched against one forward per example (and with --crossover its time by batch size).
The checkpoint is RUN's last (--run; e.g. runs/arith_demo after `make demo`), else the base model with a
fresh LoRA adapter (it rambles to max_new_tokens, so more tokens than a trained model). On a GPU, step 1
also prints the model's bytes x decode steps/s as a fraction of the GPU's memory bandwidth.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: premem_kit

GPU_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12, "T4": 0.32e12}
BATCHES = (1, 8, 32, 64, 128)


def plain_decode(model, prompt_ids: list[int], batch: int, new_tokens: int) -> float:
    """Tokens/s of the simplest batched KV-cache decode loop: one prompt repeated `batch` times, greedy,
    new_tokens steps, no stop condition (the rate the hardware gives this model at this batch)."""
    import torch

    dev = next(model.parameters()).device
    ids = torch.tensor([prompt_ids] * batch, device=dev)
    with torch.no_grad():
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(new_tokens - 1):
            out = model(input_ids=nxt, cache=cache, use_cache=True)
            cache, nxt = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return batch * new_tokens / (time.perf_counter() - t)


def evaluate_checkpoint(model, tok, train, test, how, test_samples: int) -> dict:
    """One checkpoint's work in evaluate.py: sampled answers to the train and test questions, and the train
    targets' perplexity (grading, a few ms, left out)."""
    from premem_kit.models import inference
    from premem_kit.tasks import data

    t0 = time.perf_counter()
    tokens = 0
    for exs, n in ((train, how.samples), (test, test_samples)):
        _, k = inference.sample(model, tok, [data.make_prompt(e["question"]) for e in exs], n=n,
                                temperature=how.temperature, top_p=how.top_p, max_new_tokens=how.max_new_tokens,
                                batch_size=how.batch_size, seed=how.seed, progress=False, max_length=how.max_length,
                                sampler=how.sampler)
        tokens += k
    t1 = time.perf_counter()
    inference.perplexities(model, tok, [e["prompt"] for e in train], [e["target"] for e in train],
                           batch_size=how.ppl_batch_size, max_length=how.max_length, progress=False)
    return {"sampling_s": t1 - t0, "perplexity_s": time.perf_counter() - t1, "tokens": tokens}


def load_checkpoint_model(cfg, run, before: bool):
    """(model, tokenizer, load seconds): the base model as the kit loaded it before (GGUF converted at
    every start) or now (the cached copy), with RUN's last adapter (or a fresh one), merged only now."""
    import torch
    from peft import PeftModel, get_peft_model, LoraConfig
    from transformers import AutoModelForCausalLM

    from premem_kit.core import runs
    from premem_kit.models import loading

    t = time.perf_counter()
    tok = loading.load_tokenizer(cfg.model)
    folder, gguf = loading.resolve_source(cfg.model)
    if before and gguf:
        base = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    else:
        base = loading.load_base_model(cfg)
    ckpts = runs.checkpoints(run) if run else []
    if ckpts:
        model = PeftModel.from_pretrained(base, str(ckpts[-1][2]))
    else:
        model = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"))
    if not before:
        model.merge_adapter()
    return model.eval(), tok, time.perf_counter() - t


def naive_perplexity(model, tok, prompts, targets):
    """One forward per example through the model's own loss (logits at every position)."""
    import torch

    from premem_kit.tasks import data
    from premem_kit.models import loading as models

    dev = models.model_device(model)
    out = []
    with torch.no_grad():
        for p, t in zip(prompts, targets):
            f = data.encode(tok, p, t)
            ids = torch.tensor([f["input_ids"]], device=dev)
            lab = torch.tensor([f["labels"]], device=dev)
            out.append(float(torch.exp(model(input_ids=ids, labels=lab).loss)))
    return out


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    """This CPU's measured fp32 matmul rate (the ceiling for dense model work), in GFLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def padding_fraction(tok, examples, bs: int) -> float:
    """Padded positions / real positions when the examples are batched longest-first (target_nll's order)."""
    from premem_kit.tasks import data

    lens = sorted((len(data.encode(tok, e["prompt"], e["target"])["input_ids"]) for e in examples), reverse=True)
    padded = sum(max(lens[i:i + bs]) * len(lens[i:i + bs]) for i in range(0, len(lens), bs))
    return padded / sum(lens) - 1


def crossover(model, tok, exs, sizes=(1, 2, 4, 8, 16)) -> None:
    """Perplexity seconds per example by batch size, for the shortest and the longest half of exs."""
    from premem_kit.tasks import data
    from premem_kit.models import inference

    lens = [len(data.encode(tok, e["prompt"], e["target"])["input_ids"]) for e in exs]
    order = sorted(range(len(exs)), key=lambda i: lens[i])
    halves = {"short": [exs[i] for i in order[: len(exs) // 2]], "long": [exs[i] for i in order[len(exs) // 2:]]}
    print(f"{'examples':>8} {'tokens':>11} " + " ".join(f"{'bs ' + str(b):>13}" for b in sizes))
    for name, part in halves.items():
        ls = sorted(len(data.encode(tok, e["prompt"], e["target"])["input_ids"]) for e in part)
        cells = []
        for b in sizes:
            _, t = timed(lambda: inference.perplexities(model, tok, [e["prompt"] for e in part],
                                                        [e["target"] for e in part], batch_size=b, progress=False))
            cells.append(f"{t / len(part) * 1000:6.0f}ms+{padding_fraction(tok, part, b):4.0%}")
        print(f"{name:>8} {ls[0]:>4}-{ls[-1]:<6} " + " ".join(f"{c:>13}" for c in cells))
    print("(ms per example, + the padded positions that batch size adds)")


def timed(fn):
    import torch

    t = time.perf_counter()
    r = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return r, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--config", default=str(root / "configs" / "arith_demo.yaml"), help="the settings evaluated")
    ap.add_argument("--run", help="a trained run folder whose last checkpoint is evaluated (default: a fresh adapter)")
    ap.add_argument("--train-examples", type=int, default=12, help="train questions (default: the demo's before 2026-12)")
    ap.add_argument("--test-examples", type=int, default=16, help="test questions (default: the demo's before 2026-12)")
    ap.add_argument("--test-samples", type=int, default=2, help="samples per test question (the demo's before 2026-12)")
    ap.add_argument("--before-batch-size", type=int, default=4, help="prompts per generate call before (the demo's)")
    ap.add_argument("--skip-before", action="store_true", help="measure only the kit as it is now")
    ap.add_argument("--decode-tokens", type=int, default=64, help="new tokens per plain decode loop")
    ap.add_argument("--ppl-examples", type=int, default=32)
    ap.add_argument("--ppl-batch-size", type=int, default=16)
    ap.add_argument("--crossover", action="store_true", help="perplexity time by batch size and example length")
    a = ap.parse_args()
    import dataclasses

    import torch  # after parsing: --help and bad arguments answer at once

    from premem_kit.core import config
    from premem_kit.evaluation.evaluation import Sampling
    from premem_kit.models import inference
    from premem_kit.tasks import data

    cfg = config.load_config(a.config)
    train = data.load_split(cfg, "train")[: a.train_examples]
    test = data.load_split(cfg, "test")[: a.test_examples]
    how = Sampling.of(cfg)
    print(f"settings {a.config}: {len(train)} train questions x {how.samples} + {len(test)} test x {a.test_samples} samples, "
          f"max {how.max_new_tokens} new tokens; threads {torch.get_num_threads()}")

    rows = {}
    if not a.skip_before:
        model, tok, load_s = load_checkpoint_model(cfg, a.run, before=True)
        r = evaluate_checkpoint(model, tok, train, test,
                                dataclasses.replace(how, sampler="generate", batch_size=a.before_batch_size),
                                a.test_samples)
        rows["before"] = dict(r, load_s=load_s)
        del model
    model, tok, load_s = load_checkpoint_model(cfg, a.run, before=False)
    rows["after"] = dict(evaluate_checkpoint(model, tok, train, test, how, a.test_samples), load_s=load_s)

    prompt = data.tokenize_prompt(tok, data.make_prompt(test[0]["question"]), cfg.max_length)[0]
    plain_decode(model, prompt, 2, 4)  # warm-up
    rates = {b: plain_decode(model, prompt, b, a.decode_tokens) for b in BATCHES}
    print("\nplain KV-cache decode loop, tokens/s by batch: "
          + ", ".join(f"{b}: {rates[b]:.0f}" for b in BATCHES))
    n_params = sum(p.numel() for p in model.parameters())
    if not torch.cuda.is_available():
        ceiling = matmul_gflops()
        best = max(rates.values())
        print(f"cpu ceiling: fp32 matmul {ceiling:.0f} GFLOP/s; the loop's best reaches {2 * n_params * best / 1e9:.0f} "
              f"GFLOP/s = {2 * n_params * best / 1e9 / ceiling:.0%} of it")
    else:
        name = torch.cuda.get_device_name()
        bw = next((v for k, v in GPU_BANDWIDTH.items() if k in name), None)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for b in BATCHES:
            steps = rates[b] / b
            print(f"  batch {b}: {nbytes / 1e9:.2f} GB x {steps:.1f} steps/s = "
                  + (f"{nbytes * steps / bw:.1%} of {bw / 1e12:.2f} TB/s" if bw else "unknown bandwidth"))

    print(f"\none checkpoint's evaluation ({'RUN ' + a.run if a.run else 'base model + fresh LoRA adapter'}):")
    print(f"{'':8} {'load s':>7} {'sampling s':>10} {'perplexity s':>12} {'total s':>8} {'tokens':>7} {'tok/s e2e':>9}")
    for k, r in rows.items():
        r["total_s"] = r["load_s"] + r["sampling_s"] + r["perplexity_s"]
        print(f"{k:8} {r['load_s']:7.1f} {r['sampling_s']:10.1f} {r['perplexity_s']:12.1f} {r['total_s']:8.1f} "
              f"{r['tokens']:7d} {r['tokens'] / r['total_s']:9.1f}")
    if "before" in rows:
        b, n = rows["before"], rows["after"]
        print(f"after / before: {b['total_s'] / n['total_s']:.1f}x faster per checkpoint with load "
              f"({b['sampling_s'] + b['perplexity_s']:.0f} s -> {n['sampling_s'] + n['perplexity_s']:.0f} s "
              f"without: {(b['sampling_s'] + b['perplexity_s']) / (n['sampling_s'] + n['perplexity_s']):.1f}x)")
    e2e = rows["after"]["tokens"] / rows["after"]["total_s"]
    ref = max(rates[64], rates[128])
    print(f"kit end to end {e2e:.0f} tok/s = {e2e / ref:.0%} of the plain loop's best at batch 64/128 "
          f"({ref:.0f} tok/s); target >= 40%")

    exs = test[: a.ppl_examples]
    P, T = [e["prompt"] for e in exs], [e["target"] for e in exs]
    (bp, _), bpt = timed(lambda: inference.perplexities(model, tok, P, T, batch_size=a.ppl_batch_size, progress=False))
    npp, npt = timed(lambda: naive_perplexity(model, tok, P, T))
    err = max(abs(x - y) / y for x, y in zip(bp, npp))
    print(f"\nperplexity batched {len(P) / bpt:8.2f} ex/s ({bpt:.1f} s)   naive per-example {len(P) / npt:8.2f} ex/s "
          f"({npt:.1f} s)   ratio {npt / bpt:.2f}x   max rel. difference {err:.1e}")
    if a.crossover and not torch.cuda.is_available():
        crossover(model, tok, test[: max(a.ppl_examples, 32)])


if __name__ == "__main__":
    main()
