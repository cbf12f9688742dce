"""What bench/bench_gpu.py does per model, in order, and what each step should take on one H100 SXM.

The steps come from the parsed options through `model_steps`, the same lists the benchmark's phases run
(tests/test_bench_gpu.py checks a run's rows against them). The seconds come from the assumptions in
ASSUME below, which are ours, not measurements; the arithmetic is in `estimate`. `python3
bench/bench_gpu.py --plan` prints the table, the total and the disk the weights need.
"""
from __future__ import annotations

import math

import cost_estimate

PEAK_FLOPS, BANDWIDTH = cost_estimate.GPUS["H100 SXM"][0] * 1e12, cost_estimate.GPUS["H100 SXM"][1] * 1e12
ASSUME = {  # our assumptions for one H100 SXM (each is a guess until bench_gpu.py has run there)
    "child_start_s": 15.0,  # the model's process: python, torch, transformers, peft imports, CUDA context
    "init_s": 8.0,  # random bf16 weights built on the GPU (transformers' per-module init)
    "save_Bps": 1.0e9,  # safetensors written to the local disk
    "load_4bit_Bps": 1.0e9,  # bf16 safetensors (page cache) read and quantized to NF4 on the GPU
    "load_bf16_Bps": 2.0e9,  # bf16 safetensors read straight onto the GPU
    "prepare_s": 5.0,  # adapter removed, prepare_model_for_kbit_training, a new adapter
    "decode_step_min_s": {"4bit": 0.035, "bf16": 0.025},  # HF generate without CUDA graphs: kernel launches
    "mfu_forward": 0.5,  # prefill and perplexity, share of the dense bf16 peak
    "mfu_qlora": 0.3,  # 4-bit weights dequantized in every matrix product
    "mfu_full": 0.4,
    "trainer_setup_s": 3.0,  # Trainer, optimizer, data collator, first-step compilation of nothing
    "forward_overhead_s": 0.05,  # per perplexity batch
}
NF4_BYTES_PER_PARAM = 0.5 * (1 + 4 / 64 / 4 + 1 / 256 / 64)  # 4 bits + double-quantized absmax per 64


def arch_numbers(arch: dict, params: int) -> dict:
    emb = arch["vocab_size"] * arch["hidden_size"]
    tied = bool(arch.get("tie_word_embeddings"))
    head = arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]
    kv_heads = arch.get("num_key_value_heads") or arch["num_attention_heads"]
    return {"params": params, "emb": emb, "tied": tied,
            "kv_bf16_per_token": 2 * arch["num_hidden_layers"] * kv_heads * head * 2,
            "bf16_bytes": 2 * params,
            # embedding and output layer stay bf16 in bitsandbytes' 4-bit models
            "nf4_bytes": (params - emb * (1 if tied else 2)) * NF4_BYTES_PER_PARAM + 2 * emb * (1 if tied else 2)}


def model_steps(opts, recipes: dict) -> list[dict]:
    """The measurements of one model in the order bench_gpu.py runs them. recipes: {task: recipe dict}
    (micro_batch_size, max_length). Each step has a `key`, the same as bench_gpu.row_key of its row."""
    steps = [{"key": ("start",)}, {"key": ("build",)}]
    skip = opts.skip
    ev = lambda phase: ([{"key": ("sampling", phase, b), "batch": b} for b in opts.batches]  # noqa: E731
                        if "sample" not in skip else []) + \
        ([{"key": ("perplexity", phase, b), "batch": b} for b in opts.ppl_batches] if "ppl" not in skip else [])
    if "4bit" not in skip:
        steps += [{"key": ("load", "4bit")}] + ev("4bit")
        if "qlora" not in skip:
            steps.append({"key": ("prepare",)})
            for task, seq, gc in opts.qlora_runs:
                r = recipes[task]
                s = r["max_length"] if seq == "max" else int(seq)
                steps.append({"key": ("qlora", task, s, gc), "micro_batch": r["micro_batch_size"], "seq": s, "gc": gc})
    if "bf16" not in skip:
        full = "full" not in skip
        if not {"sample", "ppl"} <= skip or (opts.full_dtype == "bf16" and full):
            steps += [{"key": ("load", "bf16")}] + ev("bf16")
        if full:
            r = recipes["full"]
            if opts.full_dtype == "fp32":
                steps.append({"key": ("load", "fp32")})
            for seq in opts.full_seq_lens:
                s = r["max_length"] if seq == "max" else int(seq)
                steps.append({"key": ("full_ft", s), "micro_batch": r["micro_batch_size"], "seq": s})
    return steps


def estimate(step: dict, a: dict, opts) -> float:
    """Expected seconds of one step on one H100 SXM, from ASSUME."""
    k, x = step["key"], ASSUME
    fwd = lambda tokens, mfu: 2 * a["params"] * tokens / (PEAK_FLOPS * mfu)  # noqa: E731
    if k[0] == "start":
        return x["child_start_s"]
    if k[0] == "build":
        return x["init_s"] + a["bf16_bytes"] / x["save_Bps"]
    if k[0] == "load":
        return a["bf16_bytes"] / (x["load_4bit_Bps"] if k[1] == "4bit" else x["load_bf16_Bps"]) * (2 if k[1] == "fp32" else 1)
    if k[0] == "prepare":
        return x["prepare_s"]
    if k[0] == "sampling":
        b, p, n = step["batch"], opts.prompt_len, opts.new_tokens
        wbytes = a["nf4_bytes"] if k[1] == "4bit" else a["bf16_bytes"]
        kv = a["kv_bf16_per_token"] * b * (p + n / 2)
        decode = max(x["decode_step_min_s"][k[1]], (wbytes + kv) / BANDWIDTH)
        prefill = fwd(b * p, x["mfu_forward"])
        return 3 * prefill + (n - 1 + 3) * decode  # warm-up (4 new tokens), timed prefill, timed call
    if k[0] == "perplexity":
        b, n = step["batch"], opts.ppl_examples
        return fwd((b + n) * opts.ppl_seq_len, x["mfu_forward"]) + x["forward_overhead_s"] * (1 + math.ceil(n / b))
    if k[0] in ("qlora", "full_ft"):
        tokens = step["micro_batch"] * step["seq"]
        if k[0] == "qlora":
            per = fwd(tokens, x["mfu_qlora"]) * (4 if k[3] else 3)  # forward, backward 2x, recomputed forward
        else:
            per = fwd(tokens, x["mfu_full"]) * 4 + 16 * a["params"] / BANDWIDTH  # + the update's memory traffic
        return x["trainer_setup_s"] + opts.steps * per
    raise ValueError(k)


def plan(opts, models: dict) -> dict:
    """{model: {"steps": [(key, seconds)], "seconds", "disk_bytes", "phase_4bit_s"}, "total_s", "disk_peak_bytes"}.
    models: {name: (arch, params, recipes)}."""
    out, total, disk = {}, 0.0, 0
    for name, (arch, params, recipes) in models.items():
        a = arch_numbers(arch, params)
        rows = [(s["key"], estimate(s, a, opts)) for s in model_steps(opts, recipes)]
        sec = sum(t for _, t in rows)
        first_bf16 = next((i for i, (k, _) in enumerate(rows) if k[0] in ("load", "full_ft") and k[1:2] != ("4bit",)),
                          len(rows))
        out[name] = {"steps": rows, "seconds": sec, "disk_bytes": a["bf16_bytes"],
                     "phase_4bit_s": sum(t for _, t in rows[:first_bf16])}
        total += sec
        disk = max(disk, a["bf16_bytes"])  # each model's weights are deleted before the next is built
    return {"models": out, "total_s": total, "disk_peak_bytes": disk}
