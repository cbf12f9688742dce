"""Benchmark: batched sampling and batched perplexity against naive per-prompt loops, in one run.

    python bench/bench_inference.py [--model pypi:smollm2-135m-instruct] [--prompts 16] [--samples 4]
                                    [--max-new-tokens 64] [--dtype fp32|bf16]

Prints tokens/s and examples/s for both ways and their ratios (targets on a 2-core CPU: >= 4x each),
and on a GPU the model's bytes x decode steps/s as a fraction of the GPU's memory bandwidth. On CPU it
also prints the ceiling: a measured torch matmul rate (GFLOP/s) against the FLOP rate sampling reaches
(2 x parameters per generated token), and --crossover prints the perplexity time per example by batch
size for short and long examples, with the padding each batch size adds.
"""
from __future__ import annotations

import argparse
import sys
import time
from premem_kit.core.config import DataSettings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: premem_kit

GPU_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "L4": 0.3e12, "T4": 0.32e12}


def naive_sampling(model, tok, prompts, n, max_new_tokens, seed):
    """One generate call per prompt (n return sequences each), no batching across prompts."""
    import torch

    from premem_kit.models import loading as models

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
    ap.add_argument("--crossover", action="store_true", help="perplexity time by batch size and example length")
    a = ap.parse_args()
    import torch  # after parsing: --help and bad arguments answer at once

    from premem_kit.tasks import data
    from premem_kit.models import inference
    from premem_kit.models import loading as models

    cfg = {"model": a.model, "quantization": a.quantization, "dtype": a.dtype, "attn_implementation": None}
    tok = models.load_tokenizer(a.model)
    model = models.load_base_model(cfg).eval()
    exs = data.load_split(DataSettings(data=a.data), "test")
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

    if not torch.cuda.is_available():
        n_params = sum(p.numel() for p in model.parameters())
        ceiling = matmul_gflops()
        achieved = 2 * n_params * btoks / bt / 1e9
        print(f"cpu ceiling: fp32 matmul {ceiling:.1f} GFLOP/s; batched sampling reaches {achieved:.1f} GFLOP/s "
              f"(2 x {n_params / 1e6:.0f}M parameters x {b_rate:.1f} tok/s) = {achieved / ceiling:.0%} of it")
        print(f"padding at perplexity batch {a.ppl_batch_size}: {padding_fraction(tok, pe, a.ppl_batch_size):.0%} "
              f"more positions than the examples hold")
        if a.crossover:
            crossover(model, tok, exs[: max(a.ppl_examples, 32)])
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
