"""bench/bench_gpu.py (with gpu_measure.py, gpu_arith.py, gpu_plan.py, kit_api.py) on CPU with bench/arch/tiny_llama.json:
the GPU benchmark's code path on bitsandbytes' CPU backend (4-bit NF4 weights, the 8-bit AdamW not paged);
its arithmetic on hand-computed cases (roofline traffic, the paged optimizer state of the paper models);
the weights deleted after each model; a child that ignores SIGTERM, and a SIGTERM to the whole process
group (what `timeout -s TERM` sends), do not hang the parent; the paper models' architecture files (exact
parameter counts, on the meta device); bench/cost_estimate.py with a hand-made benchmark JSON.
The same file under the oldest transformers the benchmark supports: bench/version_floor.sh (not in the
default suite: it builds a virtual environment)."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bench_gpu  # noqa: E402
import cost_estimate  # noqa: E402
import gpu_arith  # noqa: E402
import gpu_measure  # noqa: E402
import kit_api  # noqa: E402

TINY_ARGS = ["--models", "tiny_llama", "--qlora-runs", "gsm8k:32,math:40,gsm8k:32:nogc", "--full-seq-lens", "32,48",
             "--batches", "4,1", "--prompt-len", "8", "--new-tokens", "6", "--ppl-examples", "8", "--ppl-batches", "4,8",
             "--ppl-seq-len", "24", "--steps", "2", "--bandwidth-tbs", "0.05", "--time-budget", "300"]
ARCH = ROOT / "bench" / "arch"


class InlineChild:
    """subprocess.Popen for bench_gpu's per-model child command, run in this process (one start-up of
    torch less; test_sigterm_to_the_process_group runs the real child process)."""
    started = []  # (model, weights folders present when its child started)

    def __init__(self, cmd):
        assert cmd[1].endswith("bench_gpu.py") and "--child" in cmd and "--deadline" in cmd
        a = bench_gpu.parse_args(cmd[2:])
        InlineChild.started.append((a.child, sorted(p.name for p in Path(a.weights_dir).glob("*"))))
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
    for k in ("machine", "date", "device", "versions", "settings", "models", "time_budget_s", "elapsed_s",
              "expected_h100_s"):
        assert k in res, k
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(res["versions"])
    assert res["device"]["bandwidth_Bps"] == pytest.approx(0.05e12)
    assert res["stopped_early"] is False
    m = res["models"]["tiny_llama"]
    assert m["errors"] == []
    assert m["params"] == 205120 and m["build"]["bytes"] == 2 * 205120 and m["build"]["init_s"] > 0
    assert m["recipe"]["micro_batch_size"] == 8 and m["recipe"]["file"].endswith("llama3_8b_gsm8k.yaml")
    # the GPU's settings on CPU too (bitsandbytes' CPU backend), and the note says what differs
    assert m["settings"] == {"quantization_4bit_phase": "4bit", "dtype": "bf16", "full_ft_optimizer": "paged_adamw_8bit"}
    assert m["loads"]["4bit"]["quantization"] == "4bit" and m["loads"]["bf16"]["quantization"] == "none"
    if not cuda:
        assert "no CUDA" in m["notes"][0]
    # each QLoRA run with its task's recipe: GSM8K micro batch 8, MATH micro batch 4 (configs/recipes/llama3_8b_math.yaml)
    assert [(r["task"], r["seq_len"], r["micro_batch"], r["gradient_checkpointing"]) for r in m["qlora"]] == [
        ("gsm8k", 32, 8, True), ("math", 40, 4, True), ("gsm8k", 32, 8, False)]
    assert [r["recipe"] for r in m["qlora"]] == ["configs/recipes/llama3_8b_gsm8k.yaml",
                                                 "configs/recipes/llama3_8b_math.yaml",
                                                 "configs/recipes/llama3_8b_gsm8k.yaml"]
    assert [r["recipe_accumulation"] for r in m["qlora"]] == [16, 6, 16]  # batch 128 / 8, 24 / 4
    assert [r["seq_len"] for r in m["full_ft"]] == [32, 48]
    for r in m["qlora"] + m["full_ft"]:
        assert r["status"] == "ok", r
        assert r["step_s"] > 0 and r["first_step_s"] > 0 and r["update_s"] >= 0 and r["steps_done"] == 2
        assert r["tokens_per_s"] == pytest.approx(r["micro_batch"] * r["seq_len"] / r["step_s"])
        assert r["examples_per_s"] == pytest.approx(r["micro_batch"] / r["step_s"])
        assert r["recipe_optimizer_step_s"] == pytest.approx(r["recipe_accumulation"] * r["fwd_bwd_s"] + r["update_s"])
    for r in m["full_ft"]:  # bitsandbytes' 8-bit AdamW ran; its state is what its rules say, to the byte
        assert r["lora_r"] == 0 and r["optimizer"] == "paged_adamw_8bit"
        assert r["optimizer_state_total_gb"] == pytest.approx(r["optimizer_state_expected_gb"], abs=1e-12) and r["optimizer_state_total_gb"] > 0
    assert "reuses" in m["full_ft"][1]["note"]
    # the guard before the paged state's allocation sees the Trainer's optimizer (on CUDA it then checks the
    # free memory): bitsandbytes' paged AdamW, without state for the first run, with it for the reused one
    assert [r["first_update_saw"] for r in m["full_ft"]] == [{"optimizer": "AdamW", "paged": True, "state": False},
                                                             {"optimizer": "AdamW", "paged": True, "state": True}]
    assert m["qlora"][0]["first_update_saw"] == {"optimizer": "AdamW", "paged": False, "state": False}
    assert {(r["phase"], r["batch"]) for r in m["sampling"]} == {("4bit", 4), ("4bit", 1), ("bf16", 4), ("bf16", 1)}
    for r in m["sampling"]:
        assert r["status"] == "ok" and r["seconds"] > 0 and r["tokens"] == r["batch"] * 6
        assert r["tokens_per_s"] == pytest.approx(r["tokens"] / r["seconds"]) and r["tokens_per_s"] > 0
        assert 0 < r["prefill_s"] and r["decode_steps"] == 5
        if r["decode_s"]:  # None when the prefill took as long as the whole call (CPU timing noise)
            assert r["decode_s"] == pytest.approx(r["seconds"] - r["prefill_s"])
            assert r["decode_steps_per_s"] == pytest.approx(5 / r["decode_s"])
            assert r["roofline_fraction"] == pytest.approx(r["decode_read_bytes"] / r["decode_s"] / r["bandwidth_Bps"])
            assert 0 < r["roofline_fraction"] < 1
        # untied embeddings: the input embedding (1024 x 64 bf16) is not streamed; K and V, 2 layers x 2 heads x 16
        assert r["embedding_bytes"] == 1024 * 64 * 2 and r["tied_embeddings"] is False
        assert r["streamed_weight_bytes"] == r["model_bytes"] - r["embedding_bytes"]
        assert r["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2
        assert r["kv_read_bytes"] == r["kv_bytes_per_token"] * r["batch"] * (5 * 8 + 15)
    assert m["sampling"][0]["model_bytes"] == m["loads"]["4bit"]["model_bytes"]
    for r in m["perplexity"]:
        assert r["status"] == "ok" and r["examples_per_s"] == pytest.approx(r["examples"] / r["seconds"])
        assert r["target_tokens"] == r["examples"] * (r["seq_len"] - r["prompt_len"])
        assert 0 < r["mean_nll"] < 2 * math.log(1024)  # random weights: about log(vocabulary)
    # the steps gpu_plan.model_steps lists (and estimates) are the rows the run made, in order
    plan = [tuple(p["key"]) for p in m["plan"]]
    for kind in ("sampling", "perplexity", "qlora", "full_ft"):
        assert [k for k in plan if k[0] == kind] == [bench_gpu.row_key(kind, r) for r in m[kind]], kind
    assert [k for k in plan if k[0] == "load"] == [("load", k) for k in m["loads"]]
    assert "tiny_llama" in bench_gpu.table(res)
    assert not (tmp / "w").exists()  # the weights (and the emptied folder) deleted after the model
    assert not list(tmp.glob("*.part.json"))


def test_weights_are_built_once(tmp_path):
    arch = gpu_measure.read_arch(ARCH, "tiny_llama")
    first = gpu_measure.ensure_weights("tiny_llama", arch, tmp_path / "w")
    again = gpu_measure.ensure_weights("tiny_llama", arch, tmp_path / "w")
    assert first["cached"] is False and again["cached"] is True and again["bytes"] == 2 * 205120
    assert (tmp_path / "w" / "tiny_llama" / "model.safetensors").exists()
    assert gpu_measure.remove_weights("tiny_llama", tmp_path / "w") and not (tmp_path / "w").exists()


def test_disk_is_checked_before_anything_is_built(tmp_path, monkeypatch):
    arch = gpu_measure.read_arch(ARCH, "tiny_llama")
    monkeypatch.setattr(gpu_measure, "disk_free", lambda path: 10_000)  # the disk is what cannot be made small here
    with pytest.raises(gpu_measure.BenchError, match="GB free, tiny_llama needs"):
        gpu_measure.ensure_weights("tiny_llama", arch, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_two_models_fp32_master_weights_and_weights_deleted_between_models(tmp_path, monkeypatch):
    """Full finetuning alone with fp32 master weights (--full-dtype fp32) for two models: the first model's
    weights are gone before the second model's process starts, and both are gone at the end."""
    arch_dir = tmp_path / "arch"
    arch_dir.mkdir()
    for n in ("tiny_a", "tiny_b"):
        shutil.copy(ARCH / "tiny_llama.json", arch_dir / f"{n}.json")
    monkeypatch.setattr(bench_gpu, "POPEN", InlineChild)
    InlineChild.started = []
    out, w = tmp_path / "sub.json", tmp_path / "w"
    args = TINY_ARGS + ["--weights-dir", str(w), "--out", str(out), "--skip", "4bit,sample,ppl", "--full-dtype", "fp32",
                        "--full-seq-lens", "32", "--models", "tiny_a,tiny_b", "--arch-dir", str(arch_dir)]
    assert bench_gpu.main(args) == 0
    assert InlineChild.started == [("tiny_a", []), ("tiny_b", [])]
    assert not w.exists()
    res = json.loads(out.read_text())
    for name in ("tiny_a", "tiny_b"):
        m = res["models"][name]
        assert m["build"]["cached"] is False and m["errors"] == [] and res["device"]["bandwidth_Bps"] == pytest.approx(5e10)
        assert m["notes"][-1] == "4bit phase skipped: --skip 4bit" and m["sampling"] == m["qlora"] == []
        assert list(m["loads"]) == ["fp32"] and m["full_ft_recipe"]["dtype"] == "fp32"  # no bf16 load needed
        [row] = m["full_ft"]
        assert row["status"] == "ok" and row["lora_r"] == 0 and row["step_s"] > 0 and row["seq_len"] == 32
        assert row["micro_batch"] == 8 and row["recipe"] == "configs/recipes/llama3_8b_gsm8k.yaml with lora_r 0"
        assert row["optimizer_state_total_gb"] == pytest.approx(row["optimizer_state_expected_gb"], abs=1e-12) and row["optimizer_state_total_gb"] > 0
    assert not list(tmp_path.glob("*.part.json"))


def test_fixed_generation_length_halved_batches_and_time_budget(tmp_path):
    """min_new_tokens = max_new_tokens: every sequence is exactly new_tokens long even when the model
    wants to stop at once; a batch the kit halved after an out-of-memory is not recorded as ok; past the
    deadline a measurement is recorded as skipped, not run."""
    import torch

    arch = gpu_measure.read_arch(ARCH, "tiny_llama")
    folder = gpu_measure.ensure_weights("tiny_llama", arch, tmp_path / "w")["folder"]
    cfg = dict(bench_gpu.recipe_cfg(bench_gpu.DEFAULT_RECIPES["gsm8k"], folder), quantization="none", dtype="fp32")
    tok, model = kit_api.load_tokenizer(folder), kit_api.load_base_model(cfg)
    eos, pad = (arch["eos_token_id"], arch["pad_token_id"])

    def stop_at_once(mod, inp, out):  # EOS always wins; the pad token never comes
        return out.index_fill(-1, out.new_tensor([eos]).long(), 50.0).index_fill(-1, out.new_tensor([pad]).long(), -50.0)

    hook = model.lm_head.register_forward_hook(stop_at_once)
    words = gpu_measure.Words(arch)
    _, n = kit_api.sample(model, tok, [words.text(7)] * 3, n=1, max_new_tokens=6, stop=None, progress=False)
    assert n <= 3  # EOS first: without min_new_tokens nothing more is generated
    rows = gpu_measure.measure_sampling(model, tok, arch, phase="bf16", weights="fp32", batches=[3], prompt_len=8,
                                        new_tokens=6, deadline=time.time() + 60, bandwidth=None)
    assert rows[0]["status"] == "ok" and rows[0]["counted_tokens"] == 18 and rows[0]["roofline_fraction"] is None
    assert model.generation_config.min_new_tokens is None  # restored
    hook.remove()

    def oom_above_2(mod, args, kwargs):  # what CUDA raises when a batch does not fit; the kit halves and retries
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = model.model.register_forward_pre_hook(oom_above_2, with_kwargs=True)
    rows = gpu_measure.measure_sampling(model, tok, arch, phase="bf16", weights="fp32", batches=[2, 4], prompt_len=8,
                                        new_tokens=3, deadline=time.time() + 60, bandwidth=None)
    assert rows[0]["status"] == "ok" and rows[1]["status"] == "oom: the kit halved the batch and ran at [2]"
    assert "tokens_per_s" not in rows[1] and rows[1]["forward_batches"] == [2]
    rows = gpu_measure.measure_perplexity(model, tok, arch, phase="bf16", weights="fp32", batch_sizes=[2, 4], examples=4,
                                          seq_len=16, prompt_len=8, deadline=time.time() + 60)
    assert rows[0]["status"] == "ok" and rows[1]["status"].startswith("oom: the kit halved") and "examples_per_s" not in rows[1]
    hook.remove()
    past = time.time() - 1
    rows = gpu_measure.measure_perplexity(model, tok, arch, phase="bf16", weights="fp32", batch_sizes=[4], examples=4,
                                          seq_len=16, prompt_len=8, deadline=past)
    assert rows[0]["status"] == "skipped: time budget" and "examples_per_s" not in rows[0]
    row, _ = gpu_measure.measure_training(dict(cfg, lora_r=0), model, tok, arch, kind="full_ft", seq_len=16,
                                          grad_ckpt=True, steps=2, run_root=tmp_path / "r", deadline=past,
                                          recipe={"batch_size": 128})
    assert row["status"] == "skipped: time budget" and not (tmp_path / "r").exists()


def test_roofline_traffic_by_hand():
    """1,000 bytes of weights of which a 100-byte untied input embedding, 10 bytes of K and V per position,
    batch 2, 3 prompt tokens, 4 new tokens: the prefill makes token 1; decode steps 1..3 attend over 4, 5, 6
    positions and read 900 bytes of weights each: 3 x 900 + 10 x 2 x 15 = 3,000 bytes; in 1.5 s on 1,000
    B/s: 2.0. Tied, the embedding is the output layer and is read: 3,300 bytes."""
    tr = gpu_arith.decode_traffic(weight_bytes=1000, embed_bytes=100, tied=False, kv_per_token=10, batch=2,
                                    prompt_len=3, new_tokens=4)
    assert tr == {"decode_steps": 3, "streamed_weight_bytes": 900, "kv_read_bytes": 300, "decode_read_bytes": 3000}
    assert gpu_arith.roofline_fraction(tr["decode_read_bytes"], 1.5, 1000) == pytest.approx(2.0)
    assert gpu_arith.decode_traffic(weight_bytes=1000, embed_bytes=100, tied=True, kv_per_token=10, batch=2,
                                      prompt_len=3, new_tokens=4)["decode_read_bytes"] == 3300
    assert gpu_arith.roofline_fraction(3000, 0.0, 1000) is None and gpu_arith.roofline_fraction(3000, 1.0, None) is None
    # Llama3-8B at batch 128, 128 + 128 tokens, bf16 cache: 2 x 32 layers x 8 heads x 128 x 2 bytes = 131,072 per
    # position; 127 steps over 128 + j positions: 127 x 128 + 127 x 128 / 2 = 24,384 positions per sequence
    arch = gpu_measure.read_arch(ARCH, "llama3_8b")
    assert gpu_arith.kv_bytes_per_token(arch, 2) == 131072
    llama = gpu_arith.decode_traffic(weight_bytes=5_700_000_000, embed_bytes=128256 * 4096 * 2, tied=False,
                                       kv_per_token=131072, batch=128, prompt_len=128, new_tokens=128)
    assert llama["kv_read_bytes"] == 131072 * 128 * 24384  # 409 GB over 127 steps: 3.2 GB per step
    assert llama["streamed_weight_bytes"] == 5_700_000_000 - 1_050_673_152
    assert gpu_arith.kv_bytes_per_token(gpu_measure.read_arch(ARCH, "gemma2_9b"), 2) == 2 * 42 * 8 * 256 * 2


def test_paged_optimizer_state_of_the_paper_models():
    """bitsandbytes' paged 8-bit AdamW with the Trainer's 32-bit embeddings, by hand. Llama3-8B: the input
    embedding 128,256 x 4,096 at 8 bytes, the other 7,504,658,432 parameters of tensors >= 1e5 elements at 2
    bytes (the 266,240 of the norms are < 1e5: not paged): 19.21 GB. Gemma2-9B: the tied embedding 256,000 x
    3,584 at 8 bytes, 8,323,596,288 at 2 (norms 605,696): 23.99 GB."""
    import torch
    from transformers import AutoModelForCausalLM

    want = {"llama3_8b": 525_336_576 * 8 + 7_504_658_432 * 2, "gemma2_9b": 917_504_000 * 8 + 8_323_596_288 * 2}
    assert want == {"llama3_8b": 19_212_009_472, "gemma2_9b": 23_987_224_576}
    for name, paged in want.items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(gpu_measure.make_config(gpu_measure.read_arch(ARCH, name)))
        got = gpu_arith.optimizer_state_bytes(model, "paged_adamw_8bit")
        assert got["paged"] == paged
    assert gpu_arith.optimizer_state_bytes(model, "adamw") is None


def _ignores_sigterm(cmd):
    """A child process that ignores SIGTERM (as a process busy in a CUDA call can seem to)."""
    return subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE)


def test_a_child_that_ignores_sigterm_does_not_hang_the_parent(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu, "POPEN", _ignores_sigterm)
    monkeypatch.setattr(bench_gpu, "GRACE_S", 0.5)
    monkeypatch.setattr(bench_gpu, "MIN_WAIT_S", 0.5)
    monkeypatch.setattr(bench_gpu, "TERM_WAIT_S", 1.0)
    state = {}
    t0 = time.time()
    assert bench_gpu._run_child("tiny_llama", [], time.time() - 10, tmp_path / "p.json", state) is True
    proc = state["proc"]
    assert proc.stdout.readline() == b"ready\n" and proc.returncode == -signal.SIGKILL
    assert time.time() - t0 < 0.5 + 0.5 + 1.0 + 3  # the least wait, the grace, SIGTERM ignored, then SIGKILL

    class Unkillable:  # a process stuck in the driver survives SIGKILL; no such process can be made here
        pid, signals = 0, []

        def terminate(self):
            self.signals.append("TERM")

        def kill(self):
            self.signals.append("KILL")

        def wait(self, timeout=None):
            assert timeout is not None  # never an unbounded wait
            raise subprocess.TimeoutExpired("child", timeout)

    monkeypatch.setattr(bench_gpu, "KILL_WAIT_S", 0.1)
    stuck = Unkillable()
    assert bench_gpu._stop(stuck) is False and stuck.signals == ["TERM", "KILL"]


def test_sigterm_to_the_process_group_keeps_what_was_measured(tmp_path):
    """`timeout -s TERM` signals the benchmark's whole process group: the real child dies, the parent writes
    the JSON with what the child had recorded, deletes the weights and exits 130."""
    out, w = tmp_path / "o.json", tmp_path / "w"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_gpu.py")] + TINY_ARGS + [
        "--skip", "bf16,qlora", "--weights-dir", str(w), "--out", str(out), "--batches", "1", "--ppl-batches", "8"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, OUT=""))
    part = tmp_path / "bench_gpu_tiny_llama.part.json"
    t0 = time.time()
    while not part.exists() and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.1)
    assert part.exists(), proc.communicate()[0].decode()[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)
    log = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, log[-3000:]
    res = json.loads(out.read_text())
    assert res["stopped_early"] is True and res["models"]["tiny_llama"]["build"]["params"] == 205120
    assert not w.exists() and not part.exists() and "interrupted" in log


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
        "qlora": [{"status": "ok", "task": "gsm8k", "gradient_checkpointing": True, "seq_len": 256, "micro_batch": 8,
                   "examples_per_s": 4.0},
                  {"status": "ok", "task": "gsm8k", "gradient_checkpointing": False, "seq_len": 256, "micro_batch": 8,
                   "examples_per_s": 9.0},
                  {"status": "oom", "task": "math", "gradient_checkpointing": True, "seq_len": 1024, "micro_batch": 4}],
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
    # MATH (its recipe: 1,024 tokens, micro batch 4) ran out of memory: training from the assumption (2000
    # tok/s), evaluation measured
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
    # measured at the MATH recipe's settings, MATH training is from that row: 7,500 x 3 / 0.5 examples/s
    ok_math = {"status": "ok", "task": "math", "gradient_checkpointing": True, "seq_len": 1024, "micro_batch": 4,
               "examples_per_s": 0.5}
    for row, used in ((ok_math, True), (dict(ok_math, task="gsm8k"), False), (dict(ok_math, seq_len=2048), False)):
        data = json.loads(json.dumps(MEASURED))
        data["models"]["llama3_8b"]["qlora"][2] = row
        cells = {(r["task"], r["run"]): r["cells"] for r in cost_estimate.measured_costs(data)["runs"]}
        t, _, mark = cells[("math", "3 ep full")]["H100 SXM"]
        assert (t == pytest.approx(7500 * 3 / 0.5 / 3600) and mark == "m") if used else mark == "e/m"


def test_cost_without_a_json_keeps_the_estimated_table(capsys):
    assert cost_estimate.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATES, not measurements: GPU-hours per run (train + evaluate), 8B model, QLoRA\n")
    assert "| gsm8k | 1 ep full | 0.1 + 1.8 = 2.0 | 0.4 + 3.1 = 3.5 | 1.2 + 20.5 = 21.6 | 1.1 + 10.2 = 11.3 |" in out
    assert "| math | 6 ep full | 1.9 + 18.2 = 20.1 | 5.9 + 30.5 = 36.5 | 15.3 + 203.6 = 218.9 | 14.8 + 101.8 = 116.6 |" in out
    assert " m |" not in out and "per grid" not in out
    assert cost_estimate.main(["--grids"]) == 0
    assert "| gsm8k_llama3-8b | 13 | 6.4 + 53.8 = 60.1 |" in capsys.readouterr().out
