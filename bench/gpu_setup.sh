#!/usr/bin/env bash
# Set up a fresh GPU machine that cannot download, for bench/bench_gpu.py: install the wheels carried
# to it in a folder (bitsandbytes==0.50.2; prepare it where there is a network, see docs/costs.md:
#   pip download bitsandbytes==0.50.2 --no-deps -d .whl/      # 43 MB, the folder is git-ignored
# ), check what the benchmark imports, and exercise bitsandbytes for real: its import succeeds even when its
# CUDA library cannot be loaded (a stub that fails at the first call), so this runs a CUDA NF4
# quantize/dequantize round trip and one step of the paged 8-bit AdamW on a parameter of 131,072 elements
# (paged: >= 1e5) and checks the results. Downloads nothing (pip --no-index).
#
#   bash bench/gpu_setup.sh WHEELDIR            # e.g. bash bench/gpu_setup.sh .whl
#   bash bench/gpu_setup.sh -                   # no wheels to install: only the checks
#   PYTHON=/path/to/python bash bench/gpu_setup.sh WHEELDIR
#   GPU_SETUP_ALLOW_CPU=1 ...                   # without CUDA: the same checks on bitsandbytes' CPU backend
#                                               # (no paging there), and exit 0 (bench/gpu_smoke.sh on a CPU)
set -euo pipefail
WHEELDIR=${1:?usage: bash bench/gpu_setup.sh WHEELDIR (a folder holding bitsandbytes-0.50.2-*.whl, or - for none)}
PY=${PYTHON:-python3}
if [ "$WHEELDIR" != "-" ]; then
  if [ ! -d "$WHEELDIR" ]; then echo "gpu_setup: no folder $WHEELDIR" >&2; exit 2; fi
  shopt -s nullglob
  wheels=("$WHEELDIR"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then echo "gpu_setup: no .whl files in $WHEELDIR" >&2; exit 2; fi
  echo "gpu_setup: installing ${wheels[*]}"
  # --no-index: nothing from a registry. --no-deps: bitsandbytes needs torch, numpy and packaging, which the
  # machine has; without it pip re-resolves torch's own requirements and can fail on an unrelated one.
  pip_install() { "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELDIR" "$@" "${wheels[@]}"; }
  if ! out=$(pip_install 2>&1); then
    echo "$out"
    if grep -q externally-managed <<<"$out"; then
      echo "gpu_setup: a system Python that refuses pip installs: retrying with --break-system-packages" >&2
      pip_install --break-system-packages
    else
      exit 1
    fi
  else
    [ -z "$out" ] || echo "$out" | tail -2
  fi
fi
GPU_SETUP_ALLOW_CPU=${GPU_SETUP_ALLOW_CPU:-0} "$PY" - <<'PYEOF'
import importlib, os, sys, time
ok = True
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "tokenizers", "yaml", "tqdm", "numpy"):
    try:
        m = importlib.import_module(name)
        print(f"gpu_setup: {name} {getattr(m, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        ok = False
        print(f"gpu_setup: MISSING {name}: {type(e).__name__}: {e}")
try:
    import torch
    cuda = torch.cuda.is_available()
except ImportError:
    cuda = False
if cuda:
    print(f"gpu_setup: CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
elif os.environ.get("GPU_SETUP_ALLOW_CPU") == "1":
    print("gpu_setup: no CUDA device visible to torch: checking bitsandbytes' CPU backend instead (GPU_SETUP_ALLOW_CPU=1)")
else:
    ok = False
    print("gpu_setup: no CUDA device visible to torch")


def check(what, fn):
    global ok
    t0 = time.time()
    try:
        print(f"gpu_setup: OK {what}: {fn()} ({time.time() - t0:.1f} s)")
    except Exception as e:  # noqa: BLE001
        ok = False
        print(f"gpu_setup: FAILED {what}: {type(e).__name__}: {str(e)[:400]}")


def nf4_round_trip():
    import bitsandbytes.functional as F

    torch.manual_seed(0)
    x = torch.randn(4096, 64, device="cuda" if cuda else "cpu", dtype=torch.bfloat16)
    q, state = F.quantize_4bit(x, quant_type="nf4", compress_statistics=True)
    y = F.dequantize_4bit(q, state)
    err = (y.float() - x.float()).abs().mean().item()
    assert q.numel() * q.element_size() == x.numel() // 2, f"packed size {q.numel() * q.element_size()}"
    assert q.device == x.device and 0 < err < 0.15, f"mean abs error {err} (NF4 on N(0, 1): about 0.08)"
    return f"{x.numel()} values on {q.device}, mean abs error {err:.3f}"


def paged_adamw_8bit_step():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(1024, 128, device="cuda" if cuda else "cpu"))
    before = p.detach().clone()
    opt = bnb.optim.PagedAdamW8bit([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    st = opt.state[p]
    moved = (p.detach() - before).abs().max().item()
    assert st["state1"].dtype == torch.uint8 and st["state2"].dtype == torch.uint8, "not 8-bit state"
    assert 0 < moved < 0.1, f"largest change {moved} (lr 1e-2: about 0.01)"
    paged = bool(getattr(st["state1"], "is_paged", False))
    assert paged or not cuda, "the state of a 131,072-element parameter is not paged"
    return f"{p.numel()} elements, 8-bit state, paged: {paged}, largest change {moved:.4f}"


check("bitsandbytes NF4 quantize_4bit/dequantize_4bit", nf4_round_trip)
check("bitsandbytes paged 8-bit AdamW step", paged_adamw_8bit_step)
sys.exit(0 if ok else 1)
PYEOF
