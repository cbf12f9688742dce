"""GPU benchmark of the paper-scale path with random-weight models of the paper models' exact shapes.

    bash bench/gpu_smoke.sh WHEELDIR OUTDIR        # first, on a fresh machine (at most 2 minutes, see there)
    python3 bench/bench_gpu.py --out OUTDIR/gpu.json   # Llama-3-8B and Gemma-2-9B, at most --time-budget 420 s
    python3 bench/bench_gpu.py --plan              # the steps, their expected seconds on an H100, the disk

Speed and memory do not depend on the weights' values (and the GPU machine cannot download), so each model
is built from bench/arch/<model>.json with random weights on the GPU in bf16, saved to --weights-dir, and
deleted once its measurements are done (--keep-weights keeps it). Per model, in its own process, loaded and
timed through the kit (every call into premem_kit is in bench/kit_api.py):
  1. NF4 4-bit + LoRA (as evaluate.py loads a QLoRA checkpoint): sampling at batch 128, 1, 64, 16 prompts,
     fixed lengths (min_new_tokens = max_new_tokens), each batch size warmed up and its prefill timed apart:
     tokens/s, decode steps/s and the fraction of the HBM roofline (weights streamed per decode step plus the
     KV cache read, over the decode seconds; bandwidth table in bench/cost_estimate.py); then teacher-forced
     perplexity (examples/s);
  2. the adapter removed, prepared as train.py does, QLoRA optimizer steps through the kit's Trainer, each
     run with its task recipe's micro batch (--qlora-runs; default GSM8K at 256 tokens and MATH at its
     max_length 1024, with gradient checkpointing, then GSM8K at 256 without): seconds per step, update
     alone, peak memory;
  3. bf16 weights loaded straight onto the GPU: sampling and perplexity again, then full finetuning (lora_r
     0, bitsandbytes' paged 8-bit AdamW, gradient checkpointing): step time, peak memory, the paged optimizer
     state (measured, and by bitsandbytes' rules), fits in 80 GB or not (--full-dtype fp32: fp32 master
     weights with bf16 autocast, configs/recipes/fullft_<model>_gsm8k.yaml). The paged state is allocated
     after PyTorch's cache is emptied, and not at all when it would not fit in the free GPU memory.
Out-of-memory is caught and recorded, and so is a batch that the kit halved after one. The time budget is
shared among the models in proportion to their expected seconds (bench/gpu_plan.py); what no longer fits
is recorded as skipped, and the JSON is rewritten after every measurement. Without CUDA the same code runs
on bitsandbytes' CPU backend (4-bit weights, the 8-bit AdamW not paged; no memory figures):
tests/test_bench_gpu.py and bench/gpu_smoke.sh run it so. The timed calls are in bench/gpu_measure.py.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_measure import (  # noqa: E402  (it also puts the repository root on sys.path)
    ROOT, SKIPPED, BenchError, cuda, device_info, ensure_weights, free_memory, host_rss_peak_gb, kit_api,
    load_context, log, measure_perplexity, measure_sampling, measure_training, mem_gb, model_bytes, read_arch,
    remove_weights, share, sync, versions, weights_bytes, write_json)
import gpu_plan  # noqa: E402

HERE = Path(__file__).resolve().parent
TASKS = ("gsm8k", "math")
RECIPES = {m: {t: f"configs/recipes/{m}_{t}.yaml" for t in TASKS} for m in ("llama3_8b", "gemma2_9b")}
DEFAULT_RECIPES = RECIPES["llama3_8b"]  # for other architectures (tiny_llama)
TRANSFORMERS_FLOOR = (5, 17)  # the oldest transformers this benchmark and the kit's calls are checked with
GRACE_S = 40  # a child past its share gets this long to finish its current measurement
TERM_WAIT_S = 15  # then SIGTERM, and this long before SIGKILL
KILL_WAIT_S = 10  # after SIGKILL, this long before the child is given up (a process stuck in the driver)
MIN_SHARE_S = 30  # a model with less time left than this is skipped
MIN_WAIT_S = 5.0  # a child is given at least this long before its grace period starts
POPEN = subprocess.Popen  # how a model's child process starts (the test runs it inline)


# ----------------------------------------------------------------------------- recipes, steps

def recipe_cfg(recipe_path, folder: str, micro_batch=None) -> dict:
    """A recipe as a dict, pointed at the bench model (the one place a kit config is built: kit_api.recipe)."""
    cfg = kit_api.recipe(recipe_path, model=folder, tokenizer=None, live_premem=False)
    cfg["micro_batch_size"] = micro_batch or cfg["micro_batch_size"]
    return cfg


def recipe_paths(name: str, opts) -> dict:
    """{task: recipe path} for a model; --recipe for every task."""
    return {t: opts.recipe for t in TASKS} if opts.recipe else RECIPES.get(name, DEFAULT_RECIPES)


def fullft_recipe_path(name: str, opts):
    """fp32 master weights: configs/recipes/fullft_<model>_gsm8k.yaml when there is one, else None (the GSM8K
    QLoRA recipe with lora_r 0)."""
    path = f"configs/recipes/fullft_{name}_gsm8k.yaml"
    return None if opts.recipe or not (ROOT / path).exists() else path


def step_recipes(name: str, opts, folder: str = "-") -> dict:
    """The recipes gpu_plan.model_steps needs: per task, and "full" for full finetuning."""
    paths = recipe_paths(name, opts)
    out = {t: recipe_cfg(p, folder, opts.micro_batch) for t, p in paths.items()}
    fp = fullft_recipe_path(name, opts) if opts.full_dtype == "fp32" else None
    out["full"] = recipe_cfg(fp, folder, opts.micro_batch) if fp else out["gsm8k"]
    return out


def row_key(kind: str, r: dict) -> tuple:
    """A result row's key, as gpu_plan.model_steps names the step that makes it."""
    return {"sampling": lambda: ("sampling", r["phase"], r["batch"]),
            "perplexity": lambda: ("perplexity", r["phase"], r["batch_size"]),
            "qlora": lambda: ("qlora", r["task"], r["seq_len"], r["gradient_checkpointing"]),
            "full_ft": lambda: ("full_ft", r["seq_len"])}[kind]()


def model_plan(names, opts) -> dict:
    """gpu_plan.plan for these models (their parameters counted on the meta device)."""
    models = {}
    for n in names:
        arch = read_arch(opts.arch_dir, n)
        models[n] = (arch, arch.get("_params") or weights_bytes(arch, 1), step_recipes(n, opts))
    return gpu_plan.plan(opts, models)


# ----------------------------------------------------------------------------- one model

def bench_model(name: str, opts, deadline: float, save) -> dict:
    """Every measurement of one model; `save(result)` after each."""
    t_start, gpu = time.time(), cuda()
    arch = read_arch(opts.arch_dir, name)
    res = {"name": name, "arch_file": str(Path(opts.arch_dir) / f"{name}.json"), "build": None, "loads": {},
           "qlora": [], "full_ft": [], "sampling": [], "perplexity": [], "errors": [], "notes": [],
           "settings": {"quantization_4bit_phase": "4bit", "dtype": "bf16", "full_ft_optimizer": "paged_adamw_8bit"}}

    def commit():
        res["seconds"] = round(time.time() - t_start, 2)
        save(res)

    if not gpu:
        res["notes"].append("no CUDA: bitsandbytes' CPU backend (4-bit NF4 weights; the 8-bit AdamW state not paged), "
                            "no bf16 autocast in the Trainer, no memory figures; times are not GPU times")
    pl = model_plan([name], opts)["models"][name]
    log(f"{name}: building or finding the random-weight model in {opts.weights_dir}")
    res["build"] = ensure_weights(name, arch, opts.weights_dir)
    res["params"] = res["build"]["params"]
    commit()
    recipes = step_recipes(name, opts, res["build"]["folder"])
    cfg0 = recipes["gsm8k"]
    res["recipe"] = {"file": recipe_paths(name, opts)["gsm8k"], **{k: cfg0[k] for k in (
        "micro_batch_size", "batch_size", "max_length", "optimizer", "attn_implementation", "lora_r", "lora_alpha",
        "lora_target_modules", "gradient_checkpointing")}}
    res["plan"] = [{"key": list(k), "expected_h100_s": round(t, 1)} for k, t in pl["steps"]]
    ctx = {"arch": arch, "cfg0": cfg0, "recipes": recipes, "tok": kit_api.load_tokenizer(res["build"]["folder"]),
           "commit": commit, "run_root": Path(opts.weights_dir) / "_runs" / name, "res": res, "opts": opts}
    end_4bit = time.time() + (deadline - time.time()) * pl["phase_4bit_s"] / max(pl["seconds"], 1e-9)
    for phase, fn, end in (("4bit", _phase_4bit, end_4bit), ("bf16", _phase_bf16, deadline)):
        if phase in opts.skip or time.time() > end - 15:
            res["notes"].append(f"{phase} phase skipped: " + (f"--skip {phase}" if phase in opts.skip else "time budget"))
            continue
        try:
            fn(ctx, end)
        except Exception as e:  # noqa: BLE001  (the phase's models go with its frame)
            res["errors"].append({"phase": phase, "error": f"{type(e).__name__}: {e}"[:500],
                                  "traceback": traceback.format_exc()[-3000:]})
            log(f"{name}: {phase} phase failed: {type(e).__name__}: {str(e)[:300]}")
        free_memory()
        commit()
    import shutil

    shutil.rmtree(ctx["run_root"], ignore_errors=True)
    with contextlib.suppress(OSError):
        ctx["run_root"].parent.rmdir()  # _runs, when empty
    commit()
    return res


def _load(ctx, key: str, cfg: dict, weights: str, lora: bool = False):
    """The kit's load_base_model (+ add_lora), timed and recorded under res['loads'][key]; unquantized
    weights go straight to the GPU (gpu_measure.load_context)."""
    free_memory()
    t0 = time.time()
    with load_context(cfg):
        model = kit_api.load_base_model(cfg)
    model = kit_api.add_lora(model, dict(cfg, gradient_checkpointing=False)) if lora else model
    sync()
    ld = ctx["res"]["loads"][key] = {"seconds": round(time.time() - t0, 2), "quantization": cfg["quantization"],
                                     "dtype": cfg["dtype"], "weights": weights, "model_bytes": model_bytes(model),
                                     "device": str(next(model.parameters()).device), "allocated_gb": mem_gb("now"),
                                     "host_rss_peak_gb": host_rss_peak_gb()}
    log(f"{ctx['res']['name']}: {weights} load {ld['seconds']} s, {ld['model_bytes'] / 1e9:.2f} GB")
    ctx["commit"]()
    return model


def _evaluate(ctx, model, phase: str, weights: str, end: float) -> None:
    """Sampling (40% of the phase's time left) and perplexity (20% of what is then left)."""
    res, o, kw = ctx["res"], ctx["opts"], dict(phase=phase, weights=weights)
    if "sample" not in o.skip:
        res["sampling"] += measure_sampling(model, ctx["tok"], ctx["arch"], batches=o.batches, prompt_len=o.prompt_len,
                                            new_tokens=o.new_tokens, deadline=share(0.4, end),
                                            bandwidth=o.device["bandwidth_Bps"], **kw)
        ctx["commit"]()
    if "ppl" not in o.skip:
        res["perplexity"] += measure_perplexity(model, ctx["tok"], ctx["arch"], batch_sizes=o.ppl_batches,
                                                examples=o.ppl_examples, seq_len=o.ppl_seq_len,
                                                prompt_len=o.ppl_prompt_len, deadline=share(0.2, end), **kw)
        ctx["commit"]()


def _seq(spec: str, cfg: dict) -> int:
    return cfg["max_length"] if spec == "max" else int(spec)


def _phase_4bit(ctx, end) -> None:
    """NF4 + LoRA as evaluate.py loads a QLoRA checkpoint: sampling, perplexity; then, the adapter removed
    and the model prepared as train.py does (load_for_training), QLoRA training runs, each with its task's
    recipe (micro batch, max_length, optimizer, learning rate)."""
    res, opts, st = ctx["res"], ctx["opts"], ctx["res"]["settings"]
    q = dict(quantization=st["quantization_4bit_phase"], dtype=st["dtype"])
    cfg = dict(ctx["cfg0"], **q)
    weights = f"nf4 + LoRA r{cfg['lora_r']}"
    lora = _load(ctx, "4bit", cfg, weights, lora=True)
    _evaluate(ctx, lora, "4bit", weights, end)
    if "qlora" in opts.skip:
        return
    base = lora.unload()
    del lora
    from peft import prepare_model_for_kbit_training

    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
    model = kit_api.add_lora(base, dict(cfg, gradient_checkpointing=True))
    model.config.pad_token_id = ctx["tok"].pad_token_id
    for task, seq, ck in opts.qlora_runs:
        tcfg = dict(ctx["recipes"][task], **q)
        if ck:
            hf = model.get_base_model()
            (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()
        rec = {"file": recipe_paths(res["name"], opts)[task], "task": task, "batch_size": tcfg["batch_size"]}
        row, _ = measure_training(dict(tcfg, gradient_checkpointing=ck), model, ctx["tok"], ctx["arch"], kind="qlora",
                                  seq_len=_seq(seq, tcfg), grad_ckpt=ck, steps=opts.steps, run_root=ctx["run_root"],
                                  deadline=end, recipe=rec)
        res["qlora"].append(dict(row, weights=weights))
        ctx["commit"]()


def _phase_bf16(ctx, end) -> None:
    """16-bit weights as evaluate.py loads a full-finetuning checkpoint: sampling, perplexity; then full
    finetuning, all runs with one (paged) optimizer."""
    res, opts, st = ctx["res"], ctx["opts"], ctx["res"]["settings"]
    cfg = dict(ctx["cfg0"], quantization="none", dtype=st["dtype"])
    fcfg = dict(cfg, lora_r=0, optimizer=st["full_ft_optimizer"], gradient_checkpointing=True)
    recipe, weights = {"file": res["recipe"]["file"] + " with lora_r 0", "task": "gsm8k",
                       "batch_size": cfg["batch_size"]}, st["dtype"]
    model = None
    if not {"sample", "ppl"} <= opts.skip or (opts.full_dtype == "bf16" and "full" not in opts.skip):
        model = _load(ctx, "bf16", cfg, st["dtype"])
        _evaluate(ctx, model, "bf16", st["dtype"], end)
    if "full" in opts.skip:
        return
    if opts.full_dtype == "fp32":  # the authors' regime: fp32 master weights, bf16 autocast; its own load
        del model
        fcfg = dict(ctx["recipes"]["full"], quantization="none", dtype="fp32", lora_r=0, optimizer=st["full_ft_optimizer"],
                    gradient_checkpointing=True)
        if "mixed_precision" in fcfg:  # the kit's switch for bf16 compute on fp32 weights
            fcfg["mixed_precision"] = "bf16"
        path = fullft_recipe_path(res["name"], opts)
        recipe = {"file": path or res["recipe"]["file"] + " with lora_r 0", "task": "gsm8k",
                  "batch_size": fcfg["batch_size"]}
        res["full_ft_recipe"] = dict(recipe, **{k: fcfg.get(k) for k in ("micro_batch_size", "max_length", "optimizer",
                                                                         "weight_decay", "dtype", "mixed_precision")})
        weights = "fp32 master weights, bf16 autocast" if cuda() else "fp32"
        model = _load(ctx, "fp32", fcfg, weights)
    model.config.pad_token_id = ctx["tok"].pad_token_id
    opt = None
    for s in opts.full_seq_lens:
        note = {"note": "reuses the previous run's optimizer and its state"} if opt is not None else {}
        row, opt = measure_training(fcfg, model, ctx["tok"], ctx["arch"], kind="full_ft", seq_len=_seq(s, fcfg),
                                    grad_ckpt=True, steps=opts.steps, run_root=ctx["run_root"], deadline=end,
                                    recipe=recipe, optimizer=opt)
        res["full_ft"].append(dict(row, weights=weights, **note))
        ctx["commit"]()


# ----------------------------------------------------------------------------- command line, table

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--models", default="llama3_8b,gemma2_9b", help="comma-separated names of bench/arch/*.json")
    add("--arch-dir", default=str(HERE / "arch"))
    add("--weights-dir", default="/tmp/premem_bench",
        help="where a model's random weights are saved while it is measured (Llama3-8B 16.1 GB, Gemma2-9B 18.5 GB)")
    add("--keep-weights", action="store_true", help="keep each model's weights after its measurements (for a rerun)")
    add("--out", help="JSON path (default $OUT/gpu_<gpu-name>_<date>.json when OUT is set, else bench/results/...); "
                      "each model's partial JSON is written beside it while the model runs")
    add("--time-budget", type=float, default=420.0, help="seconds for everything (default 420)")
    add("--plan", action="store_true", help="print the steps, their expected seconds on an H100 and the disk; "
                                            "measure nothing")
    add("--quick", action="store_true", help="batches 64,1; GSM8K QLoRA at 256 tokens only; 2 steps; full finetuning "
                                             "at max_length only")
    add("--recipe", help="one recipe YAML for every model and task (default configs/recipes/<model>_<task>.yaml)")
    add("--micro-batch", type=int, help="override the recipes' micro_batch_size")
    add("--qlora-runs", help="QLoRA runs, TASK:LENGTH[:nogc] with TASK gsm8k or math (its recipe: micro batch, "
                             "max_length) and LENGTH a number or max (default gsm8k:256,math:max,gsm8k:256:nogc)")
    add("--full-seq-lens", help="full-finetuning sequence lengths, max = the recipe's max_length (default max,256)")
    add("--full-dtype", choices=("bf16", "fp32"), default="bf16",
        help="full finetuning with bf16 weights, or fp32 master weights + bf16 autocast (the authors' regime)")
    add("--steps", type=int, help="optimizer steps per training run, the first not timed (default 3)")
    add("--batches", help="sampling batch sizes, in the order run (default 128,1,64,16)")
    add("--prompt-len", type=int, default=128, help="sampling prompt tokens (default 128)")
    add("--new-tokens", type=int, default=128, help="sampling generated tokens (default 128)")
    add("--ppl-batches", help="perplexity batch sizes (default 16,64)")
    add("--ppl-examples", type=int, default=128)
    add("--ppl-seq-len", type=int, default=256, help="tokens per perplexity example (default 256)")
    add("--ppl-prompt-len", type=int, help="prompt tokens of a perplexity example (default 96)")
    add("--bandwidth-tbs", type=float, help="memory bandwidth in TB/s (default: the table, by GPU name)")
    add("--skip", default="", help="comma-separated: 4bit, bf16, sample, ppl, qlora, full")
    for hidden in ("--child", "--child-out", "--deadline"):
        add(hidden, help=argparse.SUPPRESS, type=float if hidden == "--deadline" else str)
    a = ap.parse_args(argv)
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    runs = (a.qlora_runs or ("gsm8k:256" if a.quick else "gsm8k:256,math:max,gsm8k:256:nogc")).split(",")
    a.qlora_runs = []
    for spec in runs:
        p = spec.strip().split(":")
        if len(p) not in (2, 3) or p[0] not in TASKS or not (p[1] == "max" or p[1].isdigit()) or p[2:] not in ([], ["nogc"]):
            ap.error(f"--qlora-runs: '{spec}' is not TASK:LENGTH[:nogc] (TASK gsm8k or math, LENGTH a number or max)")
        a.qlora_runs.append((p[0], p[1], p[2:] != ["nogc"]))
    a.full_seq_lens = (a.full_seq_lens or ("max" if a.quick else "max,256")).split(",")
    a.steps = a.steps or (2 if a.quick else 3)
    a.batches = ints(a.batches or ("64,1" if a.quick else "128,1,64,16"))
    a.ppl_batches = ints(a.ppl_batches or ("16" if a.quick else "16,64"))
    a.ppl_prompt_len = a.ppl_prompt_len or min(96, a.ppl_seq_len // 2)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if a.skip - {"4bit", "bf16", "sample", "ppl", "qlora", "full"}:
        ap.error(f"--skip: unknown {sorted(a.skip - {'4bit', 'bf16', 'sample', 'ppl', 'qlora', 'full'})}")
    if any(s != "max" and not s.isdigit() for s in a.full_seq_lens):
        ap.error("--full-seq-lens: numbers or 'max'")
    if a.steps < 1 or a.prompt_len < 2 or a.new_tokens < 2 or a.ppl_prompt_len >= a.ppl_seq_len:
        ap.error("--steps >= 1, --prompt-len >= 2, --new-tokens >= 2, --ppl-prompt-len < --ppl-seq-len")
    return a


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _md(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(result: dict) -> str:
    """The printed summary: per model, training, sampling and perplexity rows (markdown)."""
    dev = result.get("device") or {}
    lines = [f"GPU benchmark on {dev.get('gpu') or dev.get('device', '?')} ({dev.get('machine', '?')}), "
             f"{result.get('date', '?')}; bandwidth {fmt((dev.get('bandwidth_Bps') or 0) / 1e12)} TB/s "
             f"({dev.get('bandwidth_source', '?')}); {result.get('elapsed_s', '?')} s"
             + ("; STOPPED EARLY (time budget)" if result.get("stopped_early") else "")]
    for name, m in (result.get("models") or {}).items():
        if not m.get("build"):
            lines.append(f"\n{name}: not measured; " + "; ".join([e["error"] for e in m.get("errors", [])]
                                                                 + m.get("notes", [])))
            continue
        b, n = m["build"], m.get("params") or 0
        loads = ", ".join(f"{v['weights']} {v['seconds']} s ({v['model_bytes'] / 1e9:.2f} GB)"
                          for v in m.get("loads", {}).values())
        build = "cached" if b.get("cached") else f"{b['init_s']} s init + {b['save_s']} s save"
        size = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
        lines.append(f"\n{name}: {size} params; build {build}; loads: {loads or '-'}")
        tables = [
            (["training", "seq", "micro batch", "grad. ckpt", "s/step", "fwd+bwd s", "update s", "tok/s", "peak GB",
              "+paged GB", "recipe step s", "status"], m.get("qlora", []) + m.get("full_ft", []),
             lambda r: [f"{r['kind']} {r.get('task') or ''} {r.get('weights', '')} {r['optimizer']}", r["seq_len"],
                        r["micro_batch"],
                        "yes" if r["gradient_checkpointing"] else "no", fmt(r.get("step_s"), ".3f"),
                        fmt(r.get("fwd_bwd_s"), ".3f"), fmt(r.get("update_s"), ".3f"), fmt(r.get("tokens_per_s"), ".0f"),
                        fmt(r.get("peak_allocated_gb"), ".1f"), fmt(r.get("paged_optimizer_state_gb"), ".1f"),
                        fmt(r.get("recipe_optimizer_step_s"), ".1f"), r.get("status", "?") + (
                            f", fits 80 GB: {'yes' if r['fits_80gb'] else 'no'}" if r["kind"] == "full_ft"
                            and "fits_80gb" in r else "")]),
            (["sampling", "batch", "in/out tokens", "s", "prefill s", "tok/s", "decode steps/s", "roofline", "status"],
             sorted(m.get("sampling", []), key=lambda r: (r["phase"], r["batch"])),
             lambda r: [r["weights"], r["batch"], f"{r['prompt_len']}/{r['new_tokens']}", fmt(r.get("seconds")),
                        fmt(r.get("prefill_s"), ".3f"), fmt(r.get("tokens_per_s"), ".1f"), fmt(r.get("decode_steps_per_s"), ".1f"),
                        fmt(r.get("roofline_fraction"), ".1%"), r.get("status")]),
            (["perplexity", "batch", "examples x tokens", "s", "examples/s", "tok/s", "status"], m.get("perplexity", []),
             lambda r: [r["weights"], r["batch_size"], f"{r['examples']} x {r['seq_len']}", fmt(r.get("seconds")),
                        fmt(r.get("examples_per_s"), ".1f"), fmt(r.get("tokens_per_s"), ".0f"), r.get("status")])]
        for head, rows, cells in tables:
            lines += [_md(head), _md(["---"] * len(head))] + [_md(cells(r)) for r in rows]
        lines += [f"ERROR in {e['phase']} phase: {e['error']}" for e in m.get("errors", [])]
        lines += [f"note: {x}" for x in m.get("notes", [])]
    return "\n".join(lines)


def print_plan(opts) -> int:
    p = model_plan(opts.models, opts)
    print(f"Expected on one H100 SXM (bench/gpu_plan.py: assumptions, not measurements), with --time-budget "
          f"{opts.time_budget:.0f} s:")
    for name, m in p["models"].items():
        print(f"\n{name}: {m['seconds']:.0f} s; weights on disk {m['disk_bytes'] / 1e9:.1f} GB while it runs")
        for k, t in m["steps"]:
            print(f"  {' '.join(str(x) for x in k):<32} {t:7.1f} s")
    print(f"\ntotal {p['total_s']:.0f} s for {len(p['models'])} model(s) (budget {opts.time_budget:.0f} s); "
          f"disk at most {p['disk_peak_bytes'] / 1e9:.1f} GB at a time (+ 1 GB kept free)"
          + ("" if not opts.keep_weights else
             f"; with --keep-weights {sum(m['disk_bytes'] for m in p['models'].values()) / 1e9:.1f} GB"))
    return 0


def _child_main(a) -> int:
    """One model in this process; its result goes to --child-out after every measurement."""
    a.device = device_info(a.bandwidth_tbs)

    def save(res):
        write_json(a.child_out, {"device": a.device, "versions": versions(), "result": res})

    try:
        bench_model(a.child, a, a.deadline, save)
        return 0
    except Exception as e:  # noqa: BLE001
        save({"name": a.child, "errors": [{"phase": "setup", "error": f"{type(e).__name__}: {e}"[:500],
                                           "traceback": traceback.format_exc()[-3000:]}]})
        log(f"{a.child}: failed: {type(e).__name__}: {str(e)[:300]}")
        return 1


def _run_child(name, argv, deadline, part: Path, state: dict):
    """The model in a child process (this script with --child), stopped GRACE_S after its deadline.
    Returns True when it had to be stopped."""
    part.unlink(missing_ok=True)
    proc = state["proc"] = POPEN([sys.executable, str(Path(__file__).resolve()), *argv, "--child", name,
                                  "--child-out", str(part), "--deadline", f"{deadline:.3f}"])
    try:
        proc.wait(timeout=max(MIN_WAIT_S, deadline - time.time()) + GRACE_S)
        return False
    except subprocess.TimeoutExpired:
        log(f"{name}: past its share of the budget; stopping it")
        _stop(proc)
        return True


def _stop(proc) -> bool:
    """SIGTERM, then SIGKILL; never waits more than TERM_WAIT_S + KILL_WAIT_S. False: the process is still
    there after SIGKILL (stuck in the driver) and was given up."""
    for send, wait in ((proc.terminate, TERM_WAIT_S), (proc.kill, KILL_WAIT_S)):
        with contextlib.suppress(ProcessLookupError):
            send()
        try:
            proc.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            pass
    log(f"child process {getattr(proc, 'pid', '?')} still there {KILL_WAIT_S} s after SIGKILL: given up")
    return False


def _version_note(v: dict):
    try:
        have = tuple(int(x) for x in re.findall(r"\d+", v.get("transformers") or "")[:2])
    except ValueError:
        return None
    if have and have < TRANSFORMERS_FLOOR:
        return (f"transformers {v['transformers']} is older than {'.'.join(map(str, TRANSFORMERS_FLOOR))}, the oldest this "
                f"benchmark was checked with (bench/version_floor.sh)")
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.child:
        return _child_main(a)
    try:
        for m in a.models:
            read_arch(a.arch_dir, m)  # fail early on a bad name
        if a.plan:
            return print_plan(a)
        expected = model_plan(a.models, a)
    except BenchError as e:
        print(f"bench_gpu: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    except OSError:  # no git on the machine
        commit = ""
    result = {"benchmark": "bench/bench_gpu.py", "schema": 2, "machine": platform.node(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": None,
              "versions": versions(), "git_commit": commit.strip() or None, "time_budget_s": a.time_budget,
              "expected_h100_s": {n: round(m["seconds"], 1) for n, m in expected["models"].items()},
              "settings": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(a).items()
                           if k not in ("child", "child_out", "deadline")},
              "models": {}, "stopped_early": False,
              "notes": ["random weights with the architectures in bench/arch (speed and memory do not depend on the "
                        "values)", "sampling: one sample per prompt, all prompts in one generate call, exactly "
                        "new_tokens generated; decode_s = the call's seconds - a timed prefill (max_new_tokens 1) at "
                        "the same batch; roofline_fraction = decode_read_bytes / decode_s / bandwidth_Bps, "
                        "decode_read_bytes = streamed weights (all but an untied input embedding) x (new_tokens - 1) "
                        "+ the KV cache read by those steps"]}
    if note := _version_note(result["versions"]):
        result["notes"].append(note)
        log("WARNING: " + note)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") and not a.out else HERE / "results"

    def out_path():
        gpu = (result["device"] or {}).get("gpu") or ("cpu" if result["device"] else "unknown")
        return Path(a.out or out_dir / f"gpu_{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}_"
                    f"{result['date'][:10]}.json")

    written = []

    def flush():  # the default name has the GPU's in it, known after the first model: no stale file is left
        result["elapsed_s"] = round(time.time() - t0, 1)
        write_json(out_path(), result)
        if written and written[-1] != out_path():
            written[-1].unlink(missing_ok=True)
        written[:] = [out_path()]

    def merge(name, part, proc):
        got = None
        with contextlib.suppress(OSError, ValueError):
            got = json.loads(part.read_text())
        part.unlink(missing_ok=True)
        if got:
            result.update(device=result["device"] or got["device"], versions=got["versions"])
        code = proc.returncode if proc is not None else None
        m = result["models"][name] = got["result"] if got else {"name": name, "errors": [
            {"phase": "process", "error": f"exit code {code}, no result"}]}
        if code not in (0, None) and got:
            m.setdefault("notes", []).append(f"its process ended with exit code {code}")
        result["stopped_early"] |= any(r.get("status") == SKIPPED for k in ("qlora", "full_ft", "sampling", "perplexity")
                                       for r in m.get(k, [])) or any("time budget" in x for x in m.get("notes", []))

    def clean_up(name):
        if not a.keep_weights and remove_weights(name, a.weights_dir):
            log(f"{name}: weights deleted from {a.weights_dir}")

    if not result["versions"]["bitsandbytes"]:
        log("WARNING: bitsandbytes is not installed: 4-bit loading and the paged 8-bit AdamW will fail "
            "(run bash bench/gpu_setup.sh WHEELDIR first)")

    def on_term(signum, frame):  # a kill from outside: stop the child, keep what was measured
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    state, rc = {"proc": None}, 0
    flush()
    try:
        for i, name in enumerate(a.models):
            left = t0 + a.time_budget - time.time()
            weight = expected["models"][name]["seconds"] / sum(expected["models"][n]["seconds"] for n in a.models[i:])
            if left * weight < MIN_SHARE_S:
                result["models"][name] = {"name": name, "notes": ["skipped: time budget"]}
                result["stopped_early"] = True
                continue
            d = time.time() + left * weight
            log(f"{name}: {d - time.time():.0f} s of the {a.time_budget:.0f} s budget")
            part = out_path().parent / f"bench_gpu_{name}.part.json"
            state.update(name=name, part=part)
            result["stopped_early"] |= _run_child(name, argv, d, part, state)
            merge(name, part, state.pop("proc"))
            clean_up(name)
            flush()
    except KeyboardInterrupt:
        log("interrupted: stopping, writing what was measured")
        if state.get("proc") is not None:
            if state["proc"].poll() is None:
                _stop(state["proc"])
            merge(state["name"], state["part"], state["proc"])
            clean_up(state["name"])
        result["stopped_early"], rc = True, 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    flush()
    print(table(result))
    log(f"wrote {out_path()}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
