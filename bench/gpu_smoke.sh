#!/usr/bin/env bash
# The first command on a lent GPU machine, before bench/bench_gpu.py: at most 2 minutes, and it fails
# loudly on anything that would make the benchmark's minutes go to waste.
#   1. the machine: nvidia-smi, free disk, memory, CPUs, Python;
#   2. bench/gpu_setup.sh WHEELDIR: installs the carried bitsandbytes wheel, prints the library versions, and
#      runs a CUDA NF4 quantize_4bit round trip and one paged 8-bit AdamW step (131,072 elements);
#   3. bench/bench_gpu.py end to end on a small Llama it writes itself (4 layers, hidden 512, vocabulary
#      8,192: 4-bit load and LoRA, sampling, perplexity, QLoRA with the GSM8K and MATH recipes, bf16 load,
#      full finetuning with the paged 8-bit AdamW, weights deleted), its JSON and log under OUTDIR, then
#      checks that JSON: no error, every row ok, and on CUDA NF4 weights, a paged optimizer state equal to
#      bitsandbytes' rules and a roofline fraction in (0, 1).
#
#   bash bench/gpu_smoke.sh [WHEELDIR [OUTDIR]]    # defaults: .whl, then $OUT, else out/gpu_smoke
#   PYTHON=/path/to/python bash bench/gpu_smoke.sh ...
# Without a GPU (no nvidia-smi) the same runs on bitsandbytes' CPU backend and says so (a check of the code
# path, not of the machine): tests/test_bench_gpu.py and bench/version_floor.sh run it so.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELDIR=${1:-.whl}
OUTDIR=${2:-${OUT:-out/gpu_smoke}}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_smoke.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$SECONDS

echo "== gpu_smoke: machine ($(date -u +%FT%TZ), $(uname -n))"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  GPU=1
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm --format=csv
else
  GPU=0
  echo "gpu_smoke: NO GPU (no nvidia-smi, or it lists none): bitsandbytes' CPU backend, no paging, CPU times"
fi
df -h / "${TMPDIR:-/tmp}" "$OUTDIR" 2>/dev/null | awk 'NR == 1 || !seen[$0]++'
free -g 2>/dev/null | head -2 || true
echo "CPUs: $(nproc); $("$PY" --version 2>&1) at $(command -v "$PY")"

echo "== gpu_smoke: set-up and bitsandbytes ($((SECONDS - START)) s)"
if [ -d "$WHEELDIR" ]; then W=$WHEELDIR; else W=-; echo "gpu_smoke: no wheel folder $WHEELDIR: nothing installed"; fi
GPU_SETUP_ALLOW_CPU=$((1 - GPU)) PYTHON="$PY" bash bench/gpu_setup.sh "$W"

echo "== gpu_smoke: bench_gpu.py end to end on a small Llama ($((SECONDS - START)) s)"
mkdir -p "$WORK/arch"
if [ "$GPU" = 1 ]; then  # 4 layers, hidden 512, vocabulary 8,192: 20 M parameters
  SHAPE='"hidden_size": 512, "intermediate_size": 1376, "num_attention_heads": 8, "num_hidden_layers": 4,
 "num_key_value_heads": 4, "vocab_size": 8192'
  RUNS=(--qlora-runs gsm8k:128,math:256,gsm8k:128:nogc --full-seq-lens 256,128 --batches 16,1 --prompt-len 32
        --new-tokens 16 --ppl-examples 16 --ppl-batches 8 --ppl-seq-len 64)
else  # bitsandbytes' 4-bit backward is slow on a CPU: 2 layers, hidden 128, vocabulary 1,024, shorter sequences
  SHAPE='"hidden_size": 128, "intermediate_size": 344, "num_attention_heads": 4, "num_hidden_layers": 2,
 "num_key_value_heads": 2, "vocab_size": 1024'
  RUNS=(--qlora-runs gsm8k:32,math:48,gsm8k:32:nogc --full-seq-lens 48,32 --batches 8,1 --prompt-len 16
        --new-tokens 8 --ppl-examples 16 --ppl-batches 8 --ppl-seq-len 32)
fi
cat >"$WORK/arch/smoke_llama.json" <<EOF
{"_source": "bench/gpu_smoke.sh: a small Llama (not a real model)", "architectures": ["LlamaForCausalLM"],
 "model_type": "llama", "bos_token_id": 0, "eos_token_id": 1, "hidden_act": "silu", "initializer_range": 0.02,
 "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "tie_word_embeddings": false,
 $SHAPE}
EOF
set +e
set -o pipefail
timeout -s TERM -k 10 110 "$PY" bench/bench_gpu.py --models smoke_llama --arch-dir "$WORK/arch" \
  --weights-dir "$WORK/weights" --out "$OUTDIR/smoke.json" --time-budget 90 --steps 2 "${RUNS[@]}" 2>&1 \
  | tee "$OUTDIR/smoke.log"
rc=$?
set -e
echo "== gpu_smoke: checking $OUTDIR/smoke.json (bench_gpu.py exit code $rc, $((SECONDS - START)) s)"
GPU=$GPU RC=$rc WEIGHTS="$WORK/weights" "$PY" - "$OUTDIR/smoke.json" <<'PYEOF'
import json, os, sys
from pathlib import Path

res, bad = json.loads(Path(sys.argv[1]).read_text()), []
gpu = os.environ["GPU"] == "1"
if os.environ["RC"] != "0":
    bad.append(f"bench_gpu.py exit code {os.environ['RC']}")
m = res["models"].get("smoke_llama") or {}
bad += [f"{e['phase']}: {e['error']}" for e in m.get("errors", [])]
rows = [(k, r) for k in ("sampling", "perplexity", "qlora", "full_ft") for r in m.get(k, [])]
want = {"sampling": 4, "perplexity": 2, "qlora": 3, "full_ft": 2}
for k, n in want.items():
    if len(m.get(k, [])) != n:
        bad.append(f"{k}: {len(m.get(k, []))} rows, expected {n}")
bad += [f"{k} row {r.get('batch', r.get('batch_size', r.get('seq_len')))}: {r.get('status')}" for k, r in rows
        if r.get("status") != "ok"]
if Path(os.environ["WEIGHTS"]).exists():
    bad.append("the weights folder was not deleted")
if gpu:
    dev = res.get("device") or {}
    if not dev.get("cuda"):
        bad.append(f"torch saw no CUDA device: {dev}")
    loads = m.get("loads", {})
    if loads.get("4bit", {}).get("device", "").split(":")[0] != "cuda" or loads.get("bf16", {}).get("device", "").split(":")[0] != "cuda":
        bad.append(f"loads not on the GPU: {loads}")
    for r in m.get("full_ft", [])[:1]:  # the first run allocates the paged state
        got, exp = r.get("paged_optimizer_state_gb") or 0, r.get("paged_state_expected_gb") or 0
        if not exp or abs(got - exp) > 1e-6 * max(exp, 1e-9) + 1e-9:
            bad.append(f"paged optimizer state {got} GB, bitsandbytes' rules say {exp} GB")
    for r in m.get("sampling", []):
        f = r.get("roofline_fraction")
        if r.get("status") == "ok" and not (f and 0 < f < 1):
            bad.append(f"sampling batch {r['batch']} ({r['phase']}): roofline fraction {f}")
print(f"gpu_smoke: {len(rows)} measurements, versions {res.get('versions')}, device "
      f"{(res.get('device') or {}).get('gpu') or 'cpu'}, {res.get('elapsed_s')} s")
for b in bad:
    print(f"gpu_smoke: FAILED {b}")
sys.exit(1 if bad else 0)
PYEOF
took=$((SECONDS - START))
if [ "$GPU" = 1 ] && [ "$took" -gt 120 ]; then echo "gpu_smoke: WARNING: $took s, over its 2 minutes"; fi
echo "gpu_smoke: OK in $took s$([ "$GPU" = 1 ] || echo ' (NO GPU: a check of the code path only)')"
