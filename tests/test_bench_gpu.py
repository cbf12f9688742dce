"""bench/bench_gpu.py (and bench/gpu_measure.py) on CPU with bench/arch/tiny_llama.json (the code path of the GPU benchmark, with
quantization none), the paper models' architecture files (exact parameter counts, on the meta device),
and bench/cost_estimate.py with a hand-made benchmark JSON."""
import json
import math
import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_gpu  # noqa: E402
import cost_estimate  # noqa: E402
import gpu_measure  # noqa: E402

TINY_ARGS = ["--models", "tiny_llama", "--seq-lens", "32", "--full-seq-lens", "32,48", "--batches", "4,1",
             "--prompt-len", "8", "--new-tokens", "6", "--ppl-examples", "8", "--ppl-batches", "4,8",
             "--ppl-seq-len", "24", "--steps", "2", "--bandwidth-tbs", "0.05", "--time-budget", "300"]


class InlineChild:
    """subprocess.Popen for bench_gpu's per-model child command, run in this process (one start-up of
    torch less; the real child process was checked by hand, and is what users run)."""

    def __init__(self, cmd):
        assert cmd[1].endswith("bench_gpu.py") and "--child" in cmd and "--deadline" in cmd
        self.returncode = bench_gpu.main(cmd[2:])

    def wait(self, timeout=None):
        return self.returncode

    def poll(self):
        return self.returncode


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """The benchmark's command line on the tiny architecture."""
    import torch

    tmp = tmp_path_factory.mktemp("bench_gpu")
    out = tmp / "out.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_gpu, "POPEN", InlineChild)
        assert bench_gpu.main(TINY_ARGS + ["--weights-dir", str(tmp / "w"), "--out", str(out)]) == 0
    return json.loads(out.read_text()), tmp, torch.cuda.is_available()


def test_cpu_run_records_every_measurement_with_its_settings(cpu_run):
    res, tmp, cuda = cpu_run
    for k in ("machine", "date", "device", "versions", "settings", "models", "time_budget_s", "elapsed_s"):
        assert k in res, k
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(res["versions"])
    assert res["device"]["bandwidth_Bps"] == pytest.approx(0.05e12)
    assert res["stopped_early"] is False
    m = res["models"]["tiny_llama"]
    assert m["errors"] == []
    assert m["params"] == 205120 and m["build"]["bytes"] > 0 and m["build"]["init_s"] > 0
    assert m["recipe"]["micro_batch_size"] == 8 and m["recipe"]["file"].endswith("llama3_8b_gsm8k.yaml")
    if not cuda:  # the code chooses quantization none, fp32 and torch AdamW, and says so
        assert m["settings"] == {"quantization_4bit_phase": "none", "dtype": "fp32", "full_ft_optimizer": "adamw"}
        assert m["loads"]["4bit"]["quantization"] == "none" and "no CUDA" in m["notes"][0]
    assert [(r["seq_len"], r["gradient_checkpointing"]) for r in m["qlora"]] == [(32, True), (32, False)]
    assert [r["seq_len"] for r in m["full_ft"]] == [32, 48]
    for r in m["qlora"] + m["full_ft"]:
        assert r["status"] == "ok", r
        assert r["step_s"] > 0 and r["first_step_s"] > 0 and r["update_s"] >= 0 and r["steps_done"] == 2
        assert r["tokens_per_s"] == pytest.approx(r["micro_batch"] * r["seq_len"] / r["step_s"])
        assert r["examples_per_s"] == pytest.approx(r["micro_batch"] / r["step_s"])
        assert r["recipe_accumulation"] == 16
        assert r["recipe_optimizer_step_s"] == pytest.approx(16 * r["fwd_bwd_s"] + r["update_s"])
    assert [r["lora_r"] for r in m["full_ft"]] == [0, 0] and "reuses" in m["full_ft"][1]["note"]
    assert {(r["phase"], r["batch"]) for r in m["sampling"]} == {("4bit", 4), ("4bit", 1), ("bf16", 4), ("bf16", 1)}
    for r in m["sampling"]:
        assert r["status"] == "ok" and r["seconds"] > 0 and r["tokens"] == r["batch"] * 6
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"]) and r["tokens_per_s"] > 0
        assert r["decode_steps_per_s"] == pytest.approx(r["new_tokens"] / r["seconds"])
        assert r["roofline_fraction"] == pytest.approx(r["model_bytes"] * r["decode_steps_per_s"] / r["bandwidth_Bps"])
        assert 0 < r["roofline_fraction"] < 1
    assert m["sampling"][0]["model_bytes"] > m["loads"]["bf16"]["model_bytes"]  # + the LoRA adapter
    for r in m["perplexity"]:
        assert r["status"] == "ok" and r["examples_per_s"] == pytest.approx(r["examples"] / r["seconds"])
        assert r["target_tokens"] == r["examples"] * (r["seq_len"] - r["prompt_len"])
        assert 0 < r["mean_nll"] < 2 * math.log(1024)  # random weights: about log(vocabulary)
    assert "tiny_llama" in bench_gpu.table(res) and not (tmp / "w" / "_runs").exists()


def test_weights_are_built_once(cpu_run):
    _, tmp, _ = cpu_run
    arch = gpu_measure.read_arch(ROOT / "bench" / "arch", "tiny_llama")
    info = gpu_measure.ensure_weights("tiny_llama", arch, tmp / "w")
    assert info["cached"] is True and (tmp / "w" / "tiny_llama" / "model.safetensors").exists()


def test_full_finetuning_with_fp32_master_weights(cpu_run, monkeypatch):
    """A second run (weights cached) with only full finetuning, with fp32 master weights (--full-dtype fp32)."""
    _, tmp, _ = cpu_run
    monkeypatch.setattr(bench_gpu, "POPEN", InlineChild)
    out = tmp / "sub.json"
    assert bench_gpu.main(TINY_ARGS + ["--weights-dir", str(tmp / "w"), "--out", str(out), "--skip", "4bit,sample,ppl",
                                       "--full-dtype", "fp32", "--full-seq-lens", "32"]) == 0
    res = json.loads(out.read_text())
    m = res["models"]["tiny_llama"]
    assert m["build"]["cached"] is True and m["errors"] == [] and res["device"]["bandwidth_Bps"] == pytest.approx(5e10)
    assert m["notes"][-1] == "4bit phase skipped: --skip 4bit" and m["sampling"] == m["qlora"] == []
    assert list(m["loads"]) == ["fp32"] and m["full_ft_recipe"]["dtype"] == "fp32"  # no bf16 load needed
    [row] = m["full_ft"]
    assert row["status"] == "ok" and row["lora_r"] == 0 and row["step_s"] > 0 and row["seq_len"] == 32
    assert not list((tmp / "w").glob("_part_*"))


def test_fixed_generation_length_and_time_budget(cpu_run):
    """min_new_tokens = max_new_tokens: every sequence is exactly new_tokens long even when the model
    wants to stop at once; past the deadline a measurement is recorded as skipped, not run."""
    from premem_kit import inference, models

    _, tmp, _ = cpu_run
    folder = str(tmp / "w" / "tiny_llama")
    tok = models.load_tokenizer(folder)
    model = models.load_base_model({"model": folder, "quantization": "none", "dtype": "fp32"})
    arch = gpu_measure.read_arch(ROOT / "bench" / "arch", "tiny_llama")
    eos, pad = (arch["eos_token_id"], arch["pad_token_id"])

    def stop_at_once(mod, inp, out):  # EOS always wins; the pad token never comes
        return out.index_fill(-1, out.new_tensor([eos]).long(), 50.0).index_fill(-1, out.new_tensor([pad]).long(), -50.0)

    model.lm_head.register_forward_hook(stop_at_once)
    words = gpu_measure.Words(arch)
    _, n = inference.sample(model, tok, [words.text(7)] * 3, n=1, max_new_tokens=6, stop=None, progress=False)
    assert n <= 3  # EOS first: without min_new_tokens nothing more is generated
    rows = gpu_measure.measure_sampling(model, tok, arch, phase="bf16", weights="fp32", batches=[3], prompt_len=8,
                                      new_tokens=6, deadline=time.time() + 60, bandwidth=None)
    assert rows[0]["counted_tokens"] == 18 and rows[0]["roofline_fraction"] is None
    assert model.generation_config.min_new_tokens is None  # restored
    past = time.time() - 1
    rows = gpu_measure.measure_perplexity(model, tok, arch, phase="bf16", weights="fp32", batch_sizes=[4], examples=4,
                                        seq_len=16, prompt_len=8, deadline=past)
    assert rows[0]["status"] == "skipped: time budget" and "examples_per_s" not in rows[0]
    cfg = bench_gpu.recipe_cfg(bench_gpu.DEFAULT_RECIPE, folder)
    row, _ = gpu_measure.measure_training(dict(cfg, lora_r=0), model, tok, arch, kind="full_ft", seq_len=16,
                                        grad_ckpt=True, steps=2, run_root=tmp / "r", deadline=past,
                                        recipe={"batch_size": 128})
    assert row["status"] == "skipped: time budget" and not (tmp / "r").exists()


def test_paper_architectures_have_the_published_shapes():
    import torch
    from transformers import AutoModelForCausalLM

    expect = {"llama3_8b": (128256, 4096, 32, 32, 8, 14336), "gemma2_9b": (256000, 3584, 42, 16, 8, 14336)}
    for name, (vocab, hidden, layers, heads, kv, inter) in expect.items():
        arch = gpu_measure.read_arch(ROOT / "bench" / "arch", name)
        cfg = gpu_measure.make_config(arch)
        assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
                cfg.num_key_value_heads, cfg.intermediate_size) == (vocab, hidden, layers, heads, kv, inter)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        assert sum(p.numel() for p in model.parameters()) == arch["_params"]
    g = gpu_measure.make_config(gpu_measure.read_arch(ROOT / "bench" / "arch", "gemma2_9b"))
    assert (g.sliding_window, g.attn_logit_softcapping, g.final_logit_softcapping, g.head_dim) == (4096, 50.0, 30.0, 256)
    assert g.tie_word_embeddings and g.layer_types[:2] == ["sliding_attention", "full_attention"]
    for name, theta in (("llama3_8b", 500000.0), ("gemma2_9b", 10000.0)):
        assert gpu_measure.read_arch(ROOT / "bench" / "arch", name)["rope_theta"] == theta


def test_gpu_table_by_device_name():
    spec = cost_estimate.gpu_spec
    assert spec("NVIDIA H100 80GB HBM3") == ("H100 SXM", 989, 3.35)
    assert spec("NVIDIA H100 PCIe")[0] == "H100 PCIe" and spec("NVIDIA H100 NVL")[0] == "H100 NVL"
    assert spec("NVIDIA H200") == ("H200", 989, 4.8) and spec("NVIDIA GH200 480GB")[0] == "GH200"
    assert spec("NVIDIA A100-SXM4-80GB") == ("A100 80GB", 312, 2.0) and spec("NVIDIA A100-SXM4-40GB")[0] == "A100 40GB"
    assert spec("NVIDIA L40S")[0] == "L40S" and spec("NVIDIA L4")[0] == "L4" and spec("NVIDIA A10G")[0] == "A10G"
    assert spec("") is None and spec("cpu") is None
    for key, (tf, bw) in cost_estimate.GPUS.items():  # the two tables agree
        assert spec(key)[1:] == (tf, bw)


MEASURED = {
    "date": "2026-12-01T10:00:00+00:00", "machine": "gpuhost",
    "device": {"gpu": "NVIDIA H100 80GB HBM3", "machine": "gpuhost", "cuda": True},
    "models": {"llama3_8b": {
        "qlora": [{"status": "ok", "gradient_checkpointing": True, "seq_len": 256, "micro_batch": 8, "examples_per_s": 4.0},
                  {"status": "ok", "gradient_checkpointing": False, "seq_len": 256, "micro_batch": 8, "examples_per_s": 9.0},
                  {"status": "oom", "gradient_checkpointing": True, "seq_len": 1024, "micro_batch": 8}],
        "sampling": [{"status": "ok", "phase": "4bit", "batch": 128, "tokens_per_s": 3000.0, "weights": "nf4 + LoRA r16"},
                     {"status": "ok", "phase": "4bit", "batch": 1, "tokens_per_s": 30.0, "weights": "nf4 + LoRA r16"},
                     {"status": "ok", "phase": "bf16", "batch": 128, "tokens_per_s": 5000.0, "weights": "bf16"}],
        "perplexity": [{"status": "ok", "phase": "4bit", "batch_size": 16, "tokens_per_s": 20000.0}]},
        "tiny_llama": {"qlora": []}},
}


def test_cost_from_a_measured_json(tmp_path, capsys):
    c = cost_estimate.measured_costs(MEASURED)
    assert c["columns"] == ["H100 SXM", "A100 80GB", "L4", "A10G"] and list(c["rates"]) == ["llama3_8b"]
    runs = {(r["task"], r["run"]): r["cells"] for r in c["runs"]}
    # GSM8K, 1 epoch, full: 7473 examples / 4 examples/s; per checkpoint (7473 + 1319) x 5 samples x 150
    # tokens / 3000 tok/s + (7473 + 1319) x 136 tokens / 20000 tok/s; 2 checkpoints (base + epoch 1)
    train = 7473 / 4.0 / 3600
    ev = ((7473 + 1319) * 5 * 150 / 3000 + (7473 + 1319) * 136 / 20000) * 2 / 3600
    t, e, mark = runs[("gsm8k", "1 ep full")]["H100 SXM"]
    assert (t, e, mark) == (pytest.approx(train), pytest.approx(ev), "m")
    t, e, mark = runs[("gsm8k", "1 ep full")]["A100 80GB"]  # scaled: bf16 peak, bandwidth
    assert (t, e, mark) == (pytest.approx(train * 989 / 312), pytest.approx(ev * 3.35 / 2.0), "e")
    # MATH at 1024 tokens ran out of memory: training from the assumption (2000 tok/s), evaluation measured
    t, e, mark = runs[("math", "3 ep full")]["H100 SXM"]
    assert mark == "e/m" and t == pytest.approx(7500 * 300 * 3 / 2000 / 3600)
    assert e == pytest.approx(((7500 + 5000) * 5 * 300 / 3000 + (7500 + 5000) * 300 / 20000) * 4 / 3600)
    # the 13-run GSM8K grid is the sum of its cells
    grid = next(g for g in c["grids"] if g["grid"] == "gsm8k_llama3-8b")
    cells = [(1, "full")] * 3 + [(3, "full")] * 4 + [(6, "full")] * 4 + [(6, "half"), (12, "quarter")]
    per_ckpt = {s: ((7473 * f + 1319) * 5 * 150 / 3000 + (7473 * f + 1319) * 136 / 20000) / 3600
                for s, f in cost_estimate.FRAC.items()}
    want = sum(7473 * cost_estimate.FRAC[s] * ep / 4.0 / 3600 + per_ckpt[s] * (ep + 1) for ep, s in cells)
    assert grid["runs"] == 13 and grid["cells"]["H100 SXM"][2] == "m"
    assert sum(grid["cells"]["H100 SXM"][:2]) == pytest.approx(want)
    p = tmp_path / "gpu.json"
    p.write_text(json.dumps(MEASURED))
    assert cost_estimate.main(["--measured", str(p)]) == 0
    out = capsys.readouterr().out
    assert "measured on NVIDIA H100 80GB HBM3 (gpuhost, 2026-12-01T10:00:00+00:00)" in out
    assert f"| llama3_8b | gsm8k | 1 ep full | {train:.1f} + {ev:.1f} = {train + ev:.1f} m |" in out
    assert "| gsm8k_llama3-8b | llama3_8b | 13 |" in out and "ESTIMATES" not in out


def test_cost_without_a_json_keeps_the_estimated_table(capsys):
    assert cost_estimate.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATES, not measurements: GPU-hours per run (train + evaluate), 8B model, QLoRA\n")
    assert "| gsm8k | 1 ep full | 0.1 + 1.8 = 2.0 | 0.4 + 3.1 = 3.5 | 1.2 + 20.5 = 21.6 | 1.1 + 10.2 = 11.3 |" in out
    assert "| math | 6 ep full | 1.9 + 18.2 = 20.1 | 5.9 + 30.5 = 36.5 | 15.3 + 203.6 = 218.9 | 14.8 + 101.8 = 116.6 |" in out
    assert " m |" not in out and "per grid" not in out
    assert cost_estimate.main(["--grids"]) == 0
    assert "| gsm8k_llama3-8b | 13 | 6.4 + 53.8 = 60.1 |" in capsys.readouterr().out
