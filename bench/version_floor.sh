#!/usr/bin/env bash
# The GPU benchmark under the oldest library versions it supports, on CPU, in a throwaway virtual
# environment: transformers 5.17.0 (what the lent GPU machines' image had; requirements.txt pins 5.24.0),
# with torch, peft, accelerate and bitsandbytes at requirements.txt's pins. Runs tests/test_bench_gpu.py and
# bench/gpu_smoke.sh there. Not in the default test suite (building the environment takes minutes).
#
#   bash bench/version_floor.sh [VENV]        # default /tmp/premem_floor_venv, reused when it is there
#   TRANSFORMERS=5.17.0 TORCH=torch==2.13.0 bash bench/version_floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/premem_floor_venv}
TRANSFORMERS=${TRANSFORMERS:-5.17.0}
TORCH=${TORCH:-torch==2.13.0}
pin() { grep -E "^$1==" requirements.txt | cut -d' ' -f1; }
START=$SECONDS
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q "$TORCH"
"$VENV/bin/pip" install -q "transformers==$TRANSFORMERS" "$(pin peft)" "$(pin accelerate)" "$(pin bitsandbytes)" \
  pyyaml tqdm "safetensors>=0.4" "tokenizers>=0.20" numpy "pytest>=8"
"$VENV/bin/python" -c "import transformers, torch, peft; print('version_floor: transformers', transformers.__version__,
      'torch', torch.__version__, 'peft', peft.__version__)"
"$VENV/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '$TRANSFORMERS')" || {
  echo "version_floor: $VENV has another transformers than $TRANSFORMERS" >&2; exit 1; }
echo "== version_floor: tests/test_bench_gpu.py ($((SECONDS - START)) s)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_bench_gpu.py
echo "== version_floor: bench/gpu_smoke.sh ($((SECONDS - START)) s)"
OUTDIR=$(mktemp -d "${TMPDIR:-/tmp}/version_floor.XXXXXX")
PYTHON="$VENV/bin/python" bash bench/gpu_smoke.sh - "$OUTDIR"
rm -rf "$OUTDIR"
echo "version_floor: OK with transformers $TRANSFORMERS in $((SECONDS - START)) s"
