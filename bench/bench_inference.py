"""Benchmark: batched sampling and batched perplexity against naive per-prompt loops, in one run.

    python bench/bench_inference.py [--model pypi:smollm2-135m-instruct] [--prompts 16] [--samples 4]
                                    [--max-new-tokens 64] [--dtype fp32|bf16]

Prints tokens/s and examples/s for both ways and their ratios (targets on a 2-core CPU: >= 4x each),
and on a GPU the model's bytes x decode steps/s as a fraction of the GPU's memory bandwidth.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: premem_kit

GPU_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12, "T4": 0.32e12}


def naive_sampling(model, tok, prompts, n, max_new_tokens, seed):
    """One generate call per prompt (n return sequences each), no batching across prompts."""
    import torch

    from premem_kit import models

    torch.manual_seed(seed)
    dev = models.model_device(model)
    toks = 0
    for p in prompts:
        enc = tok([p], return_tensors="pt").to(dev)
        out = model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, num_return_sequences=n,
                             max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             stop_strings=["\nDone."], tokenizer=tok)
        toks += int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
    return toks


def naive_perplexity(model, tok, prompts, targets):
    """One forward per example through the model's own loss (logits at every position)."""
    import torch

    from premem_kit import data, models

    dev = models.model_device(model)
    out = []
    with torch.no_grad():
        for p, t in zip(prompts, targets):
            f = data.encode(tok, p, t)
            ids = torch.tensor([f["input_ids"]], device=dev)
            lab = torch.tensor([f["labels"]], device=dev)
            out.append(float(torch.exp(model(input_ids=ids, labels=lab).loss)))
    return out


def timed(fn):
    import torch

    t = time.perf_counter()
    r = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return r, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pypi:smollm2-135m-instruct")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "data" / "gsm8k_demo"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    ap.add_argument("--ppl-examples", type=int, default=32)
    ap.add_argument("--ppl-batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--quantization", default="none")
    a = ap.parse_args()
    import torch  # after parsing: --help and bad arguments answer at once

    from premem_kit import data, inference, models

    cfg = {"model": a.model, "quantization": a.quantization, "dtype": a.dtype, "attn_implementation": None}
    tok = models.load_tokenizer(a.model)
    model = models.load_base_model(cfg).eval()
    exs = data.load_split("gsm8k", a.data, "test")
    prompts = [e["prompt"] for e in exs[: a.prompts]]
    pe = exs[: a.ppl_examples]
    device = str(models.model_device(model))
    print(f"model {a.model} on {device}, dtype {next(model.parameters()).dtype}, threads {torch.get_num_threads()}")

    # warm-up (allocator, kernels)
    inference.sample(model, tok, prompts[:2], n=2, max_new_tokens=8, progress=False)
    naive_perplexity(model, tok, [pe[0]["prompt"]], [pe[0]["target"]])

    (_, btoks), bt = timed(lambda: inference.sample(model, tok, prompts, n=a.samples, max_new_tokens=a.max_new_tokens,
                                                    batch_size=a.batch_size, seed=2, progress=False))
    ntoks, nt = timed(lambda: naive_sampling(model, tok, prompts, a.samples, a.max_new_tokens, 2))
    b_rate, n_rate = btoks / bt, ntoks / nt
    print(f"sampling   batched {b_rate:8.1f} tok/s ({btoks} tokens, {bt:.1f} s)   "
          f"naive per-prompt {n_rate:8.1f} tok/s ({ntoks} tokens, {nt:.1f} s)   ratio {b_rate / n_rate:.2f}x")

    P, T = [e["prompt"] for e in pe], [e["target"] for e in pe]
    (bp, _), bpt = timed(lambda: inference.perplexities(model, tok, P, T, batch_size=a.ppl_batch_size, progress=False))
    npp, npt = timed(lambda: naive_perplexity(model, tok, P, T))
    err = max(abs(x - y) / y for x, y in zip(bp, npp))
    print(f"perplexity batched {len(P) / bpt:8.2f} ex/s ({bpt:.1f} s)   naive per-example {len(P) / npt:8.2f} ex/s "
          f"({npt:.1f} s)   ratio {npt / bpt:.2f}x   max rel. difference {err:.1e}")

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        bw = next((v for k, v in GPU_BANDWIDTH.items() if k in name), None)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        # decode steps/s: generated tokens / (sequences in flight) / time, i.e. forward passes per second
        steps = btoks / (min(a.batch_size, len(prompts)) * a.samples) / bt
        frac = f"{nbytes * steps / bw:.1%} of {bw / 1e12:.2f} TB/s" if bw else "unknown bandwidth"
        print(f"gpu {name}: model {nbytes / 1e9:.2f} GB x {steps:.1f} decode steps/s = {frac}; "
              f"peak memory {torch.cuda.max_memory_allocated() / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
