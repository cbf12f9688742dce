"""GPU benchmark of the paper-scale path with random-weight models of the paper models' exact shapes.

    bash bench/gpu_setup.sh WHEELDIR      # once per fresh machine: bitsandbytes from a carried wheel
    python3 bench/bench_gpu.py            # Llama-3-8B and Gemma-2-9B, at most --time-budget 420 s

Speed and memory do not depend on the weights' values (and the GPU machine cannot download), so each model
is built from bench/arch/<model>.json with random weights on the GPU in bf16 and saved once (--weights-dir).
Per model, loaded as the kit loads it (premem_kit.models.load_base_model), and timed through the kit:
  1. NF4 4-bit + LoRA (as evaluate.py loads a QLoRA checkpoint): inference.sample at batch 128, 1, 64, 16
     prompts, fixed lengths (min_new_tokens = max_new_tokens), tokens/s and the fraction of the HBM roofline
     (model bytes x decode steps/s / bandwidth of the GPU, table in bench/cost_estimate.py); then
     inference.target_nll (teacher-forced perplexity, examples/s);
  2. the adapter removed, prepared as train.py does, QLoRA optimizer steps through training.build_trainer
     at the recipe's micro batch (configs/recipes/<model>_gsm8k.yaml), at 256 tokens and max_length, with
     and without gradient checkpointing: seconds per step, update alone, peak memory;
  3. bf16: sampling and perplexity again, then full finetuning (lora_r 0, bitsandbytes' paged 8-bit AdamW,
     gradient checkpointing): step time, peak memory, paged optimizer state, fits in 80 GB or not
     (--full-dtype fp32: fp32 master weights with bf16 autocast, configs/recipes/fullft_<model>_gsm8k.yaml).
Out-of-memory is caught and recorded. Each model runs in its own process (paged optimizer memory is never
freed) with an equal share of the time left; what no longer fits is recorded as skipped, and the JSON is
rewritten after every measurement. Without CUDA the same code runs with quantization none, fp32 and torch
AdamW, and says so (tests/test_bench_gpu.py, with bench/arch/tiny_llama.json). The timed calls themselves
are in bench/gpu_measure.py; this file runs them per model, writes the JSON and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_measure import (  # noqa: E402  (it also puts the repository root on sys.path)
    ROOT, SKIPPED, BenchError, cuda, device_info, ensure_weights, free_memory, log, measure_perplexity,
    measure_sampling, measure_training, mem_gb, model_bytes, read_arch, share, sync, versions, write_json)

HERE = Path(__file__).resolve().parent
RECIPES = {"llama3_8b": "configs/recipes/llama3_8b_gsm8k.yaml", "gemma2_9b": "configs/recipes/gemma2_9b_gsm8k.yaml"}
DEFAULT_RECIPE = RECIPES["llama3_8b"]  # for other architectures (tiny_llama)
GRACE_S = 40  # a child past its share gets this long to finish its current measurement
POPEN = subprocess.Popen  # how a model's child process starts (the test runs it inline)


# ----------------------------------------------------------------------------- one model

def recipe_cfg(recipe_path, folder: str, micro_batch=None) -> dict:
    from premem_kit import config

    cfg = config.load_config(ROOT / recipe_path)
    cfg.update(model=folder, tokenizer=None, live_premem=False)
    cfg["micro_batch_size"] = micro_batch or cfg["micro_batch_size"]
    return cfg


def bench_model(name: str, opts, deadline: float, save) -> dict:
    """Every measurement of one model; `save(result)` after each."""
    from premem_kit import models

    t_start, gpu = time.time(), cuda()
    arch = read_arch(opts.arch_dir, name)
    recipe_path = opts.recipe or RECIPES.get(name, DEFAULT_RECIPE)
    res = {"name": name, "arch_file": str(Path(opts.arch_dir) / f"{name}.json"), "build": None, "loads": {},
           "qlora": [], "full_ft": [], "sampling": [], "perplexity": [], "errors": [], "notes": [],
           "settings": {"quantization_4bit_phase": "4bit" if gpu else "none", "dtype": "bf16" if gpu else "fp32",
                        "full_ft_optimizer": "paged_adamw_8bit" if gpu else "adamw"}}

    def commit():
        res["seconds"] = round(time.time() - t_start, 2)
        save(res)

    if not gpu:
        res["notes"].append("no CUDA: quantization none instead of 4-bit NF4, fp32 instead of bf16, torch AdamW "
                            "instead of the paged 8-bit AdamW (bitsandbytes needs a GPU here); memory not measured")
    log(f"{name}: building or finding the random-weight model in {opts.weights_dir}")
    res["build"] = ensure_weights(name, arch, opts.weights_dir)
    res["params"] = res["build"]["params"]
    commit()
    cfg0 = recipe_cfg(recipe_path, res["build"]["folder"], opts.micro_batch)
    res["recipe"] = {"file": recipe_path, **{k: cfg0[k] for k in (
        "micro_batch_size", "batch_size", "max_length", "optimizer", "attn_implementation", "lora_r", "lora_alpha",
        "lora_target_modules", "gradient_checkpointing")}}
    ctx = {"arch": arch, "cfg0": cfg0, "tok": models.load_tokenizer(res["build"]["folder"]), "commit": commit,
           "run_root": Path(opts.weights_dir) / "_runs" / name, "res": res, "opts": opts}
    for phase, fn, end in (("4bit", _phase_4bit, share(0.6, deadline)), ("bf16", _phase_bf16, deadline)):
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
    shutil.rmtree(ctx["run_root"], ignore_errors=True)
    with contextlib.suppress(OSError):
        ctx["run_root"].parent.rmdir()  # _runs, when empty
    commit()
    return res


def _load(ctx, key: str, cfg: dict, weights: str, lora: bool = False):
    """models.load_base_model (+ models.add_lora), timed and recorded under res['loads'][key]."""
    from premem_kit import models

    free_memory()
    t0 = time.time()
    model = models.load_base_model(cfg)
    model = models.add_lora(model, dict(cfg, gradient_checkpointing=False)) if lora else model
    sync()
    ld = ctx["res"]["loads"][key] = {"seconds": round(time.time() - t0, 2), "quantization": cfg["quantization"],
                                     "dtype": cfg["dtype"], "weights": weights, "model_bytes": model_bytes(model),
                                     "allocated_gb": mem_gb("now")}
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


def _seqs(spec, cfg) -> list[int]:
    return [cfg["max_length"] if s == "max" else int(s) for s in spec]


def _phase_4bit(ctx, end) -> None:
    """NF4 + LoRA as evaluate.py loads a QLoRA checkpoint: sampling, perplexity; then, the adapter removed
    and the model prepared as train.py does (load_for_training), QLoRA training runs."""
    from premem_kit import models

    res, opts, st = ctx["res"], ctx["opts"], ctx["res"]["settings"]
    cfg = dict(ctx["cfg0"], quantization=st["quantization_4bit_phase"], dtype=st["dtype"])
    weights = ("nf4" if cfg["quantization"] == "4bit" else cfg["dtype"]) + f" + LoRA r{cfg['lora_r']}"
    lora = _load(ctx, "4bit", cfg, weights, lora=True)
    _evaluate(ctx, lora, "4bit", weights, end)
    if "qlora" in opts.skip:
        return
    base = lora.unload()
    del lora
    if cfg["quantization"] != "none":
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True)
    model = models.add_lora(base, dict(cfg, gradient_checkpointing=True))
    model.config.pad_token_id = ctx["tok"].pad_token_id
    seqs = _seqs(opts.seq_lens, cfg)
    for s, ck in [(s, True) for s in seqs] + ([] if opts.no_nogc else [(s, False) for s in seqs]):
        if ck:
            hf = model.get_base_model()
            (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()
        row, _ = measure_training(dict(cfg, gradient_checkpointing=ck), model, ctx["tok"], ctx["arch"], kind="qlora",
                                  seq_len=s, grad_ckpt=ck, steps=opts.steps, run_root=ctx["run_root"], deadline=end,
                                  recipe=res["recipe"])
        res["qlora"].append(dict(row, weights=weights))
        ctx["commit"]()


def _fp32_master_cfg(ctx, full_opt):
    """fp32 weights with bf16 autocast: configs/recipes/fullft_<model>_gsm8k.yaml when there is one (its
    micro batch, weight decay, ...), else the QLoRA recipe with lora_r 0."""
    res, opts = ctx["res"], ctx["opts"]
    path = f"configs/recipes/fullft_{res['name']}_gsm8k.yaml"
    if opts.recipe or not (ROOT / path).exists():
        cfg, path = dict(ctx["cfg0"]), res["recipe"]["file"] + " with lora_r 0"
    else:
        cfg = recipe_cfg(path, res["build"]["folder"], opts.micro_batch)
    cfg.update(quantization="none", dtype="fp32", lora_r=0, optimizer=full_opt, gradient_checkpointing=True)
    if "mixed_precision" in cfg:  # the kit's switch for bf16 compute on fp32 weights
        cfg["mixed_precision"] = "bf16"
    keys = ("micro_batch_size", "batch_size", "max_length", "optimizer", "weight_decay", "dtype", "mixed_precision")
    return cfg, {"file": path, **{k: cfg.get(k) for k in keys}}


def _phase_bf16(ctx, end) -> None:
    """16-bit weights as evaluate.py loads a full-finetuning checkpoint: sampling, perplexity; then full
    finetuning, all runs with one (paged) optimizer."""
    res, opts, st = ctx["res"], ctx["opts"], ctx["res"]["settings"]
    cfg = dict(ctx["cfg0"], quantization="none", dtype=st["dtype"])
    fcfg, recipe, weights = dict(cfg, lora_r=0, optimizer=st["full_ft_optimizer"], gradient_checkpointing=True), \
        res["recipe"], st["dtype"]
    model = None
    if not {"sample", "ppl"} <= opts.skip or (opts.full_dtype == "bf16" and "full" not in opts.skip):
        model = _load(ctx, "bf16", cfg, st["dtype"])
        _evaluate(ctx, model, "bf16", st["dtype"], end)
    if "full" in opts.skip:
        return
    if opts.full_dtype == "fp32":  # the authors' regime: fp32 master weights, bf16 autocast; its own load
        del model
        fcfg, recipe = _fp32_master_cfg(ctx, st["full_ft_optimizer"])
        weights = "fp32 master weights, bf16 autocast" if cuda() else "fp32"
        model = _load(ctx, "fp32", fcfg, weights)
        res["full_ft_recipe"] = recipe
    model.config.pad_token_id = ctx["tok"].pad_token_id
    opt = None
    for s in _seqs(opts.full_seq_lens, fcfg):
        note = {"note": "reuses the previous run's optimizer and its state"} if opt is not None else {}
        row, opt = measure_training(fcfg, model, ctx["tok"], ctx["arch"], kind="full_ft", seq_len=s, grad_ckpt=True,
                                    steps=opts.steps, run_root=ctx["run_root"], deadline=end, recipe=recipe,
                                    optimizer=opt)
        res["full_ft"].append(dict(row, weights=weights, **note))
        ctx["commit"]()


# ----------------------------------------------------------------------------- command line, table

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--models", default="llama3_8b,gemma2_9b", help="comma-separated names of bench/arch/*.json")
    add("--arch-dir", default=str(HERE / "arch"))
    add("--weights-dir", default="/tmp/premem_bench", help="where the random-weight models are saved (35 GB)")
    add("--out", help="JSON path (default bench/results/gpu_<gpu-name>_<date>.json)")
    add("--time-budget", type=float, default=420.0, help="seconds for everything (default 420)")
    add("--quick", action="store_true", help="batches 64,1; 256 tokens only; no runs without checkpointing; 2 steps; "
                                             "full finetuning at max_length only")
    add("--recipe", help="recipe YAML for every model (default configs/recipes/<model>_gsm8k.yaml)")
    add("--micro-batch", type=int, help="override the recipe's micro_batch_size")
    add("--seq-lens", help="QLoRA sequence lengths, 'max' = the recipe's max_length (default 256,max)")
    add("--full-seq-lens", help="full-finetuning sequence lengths (default max,256)")
    add("--full-dtype", choices=("bf16", "fp32"), default="bf16",
        help="full finetuning with bf16 weights, or fp32 master weights + bf16 autocast (the authors' regime)")
    add("--no-nogc", action="store_true", help="skip the QLoRA runs without gradient checkpointing")
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
    a.seq_lens = (a.seq_lens or ("256" if a.quick else "256,max")).split(",")
    a.full_seq_lens = (a.full_seq_lens or ("max" if a.quick else "max,256")).split(",")
    a.no_nogc, a.steps = a.no_nogc or a.quick, a.steps or (2 if a.quick else 3)
    a.batches = ints(a.batches or ("64,1" if a.quick else "128,1,64,16"))
    a.ppl_batches = ints(a.ppl_batches or ("16" if a.quick else "16,64"))
    a.ppl_prompt_len = a.ppl_prompt_len or min(96, a.ppl_seq_len // 2)
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    if a.skip - {"4bit", "bf16", "sample", "ppl", "qlora", "full"}:
        ap.error(f"--skip: unknown {sorted(a.skip - {'4bit', 'bf16', 'sample', 'ppl', 'qlora', 'full'})}")
    if any(s != "max" and not s.isdigit() for s in a.seq_lens + a.full_seq_lens):
        ap.error("sequence lengths: numbers or 'max'")
    if a.steps < 1 or a.prompt_len < 2 or a.new_tokens < 1 or a.ppl_prompt_len >= a.ppl_seq_len:
        ap.error("--steps >= 1, --prompt-len >= 2, --new-tokens >= 1, --ppl-prompt-len < --ppl-seq-len")
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
             lambda r: [f"{r['kind']} {r.get('weights', '')} {r['optimizer']}", r["seq_len"], r["micro_batch"],
                        "yes" if r["gradient_checkpointing"] else "no", fmt(r.get("step_s"), ".3f"),
                        fmt(r.get("fwd_bwd_s"), ".3f"), fmt(r.get("update_s"), ".3f"), fmt(r.get("tokens_per_s"), ".0f"),
                        fmt(r.get("peak_allocated_gb"), ".1f"), fmt(r.get("paged_optimizer_state_gb"), ".1f"),
                        fmt(r.get("recipe_optimizer_step_s"), ".1f"), r.get("status", "?") + (
                            f", fits 80 GB: {'yes' if r['fits_80gb'] else 'no'}" if r["kind"] == "full_ft"
                            and "fits_80gb" in r else "")]),
            (["sampling", "batch", "in/out tokens", "s", "tok/s", "decode steps/s", "roofline", "status"],
             sorted(m.get("sampling", []), key=lambda r: (r["phase"], r["batch"])),
             lambda r: [r["weights"], r["batch"], f"{r['prompt_len']}/{r['new_tokens']}", fmt(r.get("seconds")),
                        fmt(r.get("tokens_per_s"), ".1f"), fmt(r.get("decode_steps_per_s"), ".1f"),
                        fmt(r.get("roofline_fraction"), ".1%"), r.get("status")]),
            (["perplexity", "batch", "examples x tokens", "s", "examples/s", "tok/s", "status"], m.get("perplexity", []),
             lambda r: [r["weights"], r["batch_size"], f"{r['examples']} x {r['seq_len']}", fmt(r.get("seconds")),
                        fmt(r.get("examples_per_s"), ".1f"), fmt(r.get("tokens_per_s"), ".0f"), r.get("status")])]
        for head, rows, cells in tables:
            lines += [_md(head), _md(["---"] * len(head))] + [_md(cells(r)) for r in rows]
        lines += [f"ERROR in {e['phase']} phase: {e['error']}" for e in m.get("errors", [])]
        lines += [f"note: {x}" for x in m.get("notes", [])]
    return "\n".join(lines)


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
    """The model in a child process (this script with --child), stopped GRACE_S after its deadline."""
    part.unlink(missing_ok=True)
    proc = state["proc"] = POPEN([sys.executable, str(Path(__file__).resolve()), *argv, "--child", name,
                                  "--child-out", str(part), "--deadline", f"{deadline:.3f}"])
    try:
        proc.wait(timeout=max(5.0, deadline - time.time()) + GRACE_S)
        return False
    except subprocess.TimeoutExpired:
        log(f"{name}: past its share of the budget; stopping it")
        _stop(proc)
        return True


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.child:
        return _child_main(a)
    t0 = time.time()
    try:
        for m in a.models:
            read_arch(a.arch_dir, m)  # fail early on a bad name
    except BenchError as e:
        print(f"bench_gpu: {e}", file=sys.stderr)
        return 2
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    except OSError:  # no git on the machine
        commit = ""
    result = {"benchmark": "bench/bench_gpu.py", "schema": 1, "machine": platform.node(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": None,
              "versions": versions(), "git_commit": commit.strip() or None, "time_budget_s": a.time_budget,
              "settings": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(a).items()
                           if k not in ("child", "child_out", "deadline")},
              "models": {}, "stopped_early": False,
              "notes": ["random weights with the architectures in bench/arch (speed and memory do not depend on the "
                        "values)", "sampling: one sample per prompt, all prompts in one generate call, exactly "
                        "new_tokens generated; roofline_fraction = model_bytes x decode_steps_per_s / bandwidth_Bps"]}

    def out_path():
        gpu = (result["device"] or {}).get("gpu") or ("cpu" if result["device"] else "unknown")
        return Path(a.out or HERE / "results" / f"gpu_{re.sub(r'[^a-z0-9]+', '-', gpu.lower()).strip('-')}_"
                    f"{result['date'][:10]}.json")

    def flush():
        result["elapsed_s"] = round(time.time() - t0, 1)
        write_json(out_path(), result)

    def merge(name, part, proc):
        got = json.loads(part.read_text()) if part.exists() else None
        part.unlink(missing_ok=True)
        if got:
            result.update(device=result["device"] or got["device"], versions=got["versions"])
        m = result["models"][name] = got["result"] if got else {"name": name, "errors": [
            {"phase": "process", "error": f"exit code {proc.returncode}, no result"}]}
        result["stopped_early"] |= any(r.get("status") == SKIPPED for k in ("qlora", "full_ft", "sampling", "perplexity")
                                       for r in m.get(k, [])) or any("time budget" in x for x in m.get("notes", []))

    if not result["versions"]["bitsandbytes"]:
        log("WARNING: bitsandbytes is not installed: on a GPU, 4-bit loading and the paged 8-bit AdamW will fail "
            "(run bash bench/gpu_setup.sh WHEELDIR first)")

    def on_term(signum, frame):  # a kill from outside: stop the child, keep what was measured
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    state, rc = {"proc": None}, 0
    try:
        for i, name in enumerate(a.models):
            left = t0 + a.time_budget - time.time()
            if left < 30:
                result["models"][name] = {"name": name, "notes": ["skipped: time budget"]}
                result["stopped_early"] = True
                continue
            d = time.time() + left / (len(a.models) - i)
            log(f"{name}: {d - time.time():.0f} s of the {a.time_budget:.0f} s budget")
            state.update(name=name, part=(part := Path(a.weights_dir) / f"_part_{name}.json"))
            result["stopped_early"] |= _run_child(name, argv, d, part, state)
            merge(name, part, state.pop("proc"))
            flush()
    except KeyboardInterrupt:
        log("interrupted: stopping, writing what was measured")
        if state.get("proc") is not None:
            if state["proc"].poll() is None:
                _stop(state["proc"])
            merge(state["name"], state["part"], state["proc"])
        result["stopped_early"], rc = True, 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    flush()
    print(table(result))
    log(f"wrote {out_path()}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
