#!/usr/bin/env bash
# Set up a fresh GPU machine that cannot download, for bench/bench_gpu.py: install the wheels carried
# to it in a folder (bitsandbytes==0.50.2; prepare it where there is a network, see docs/costs.md:
#   pip download bitsandbytes==0.50.2 --no-deps -d .whl/      # 43 MB, the folder is git-ignored
# ), then check what the benchmark imports. Downloads nothing (pip --no-index).
#
#   bash bench/gpu_setup.sh WHEELDIR            # e.g. bash bench/gpu_setup.sh .whl
#   PYTHON=/path/to/python bash bench/gpu_setup.sh WHEELDIR
set -euo pipefail
WHEELDIR=${1:?usage: bash bench/gpu_setup.sh WHEELDIR (a folder holding bitsandbytes-0.50.2-*.whl)}
PY=${PYTHON:-python3}
if [ ! -d "$WHEELDIR" ]; then echo "gpu_setup: no folder $WHEELDIR" >&2; exit 2; fi
shopt -s nullglob
wheels=("$WHEELDIR"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then echo "gpu_setup: no .whl files in $WHEELDIR" >&2; exit 2; fi
echo "gpu_setup: installing ${wheels[*]}"
# --no-index: nothing from a registry. --no-deps: bitsandbytes needs torch, numpy and packaging, which the
# machine has; without it pip re-resolves torch's own requirements and can fail on an unrelated one.
pip_install() { "$PY" -m pip install --no-index --no-deps --find-links "$WHEELDIR" "$@" "${wheels[@]}"; }
if ! out=$(pip_install 2>&1); then
  echo "$out"
  if grep -q externally-managed <<<"$out"; then
    echo "gpu_setup: a system Python that refuses pip installs: retrying with --break-system-packages" >&2
    pip_install --break-system-packages
  else
    exit 1
  fi
else
  echo "$out" | tail -2
fi
"$PY" - <<'PYEOF'
import importlib, sys
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
else:
    ok = False
    print("gpu_setup: no CUDA device visible to torch")
sys.exit(0 if ok else 1)
PYEOF
