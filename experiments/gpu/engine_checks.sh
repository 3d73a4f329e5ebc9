#!/usr/bin/env bash
# The engine-variant GPU check (see experiments/gpu/README.md), one device call. From the repository root:
#
#   bash experiments/gpu/engine_checks.sh          # on the GPU box: ~4 minutes, writes to $OUT
#   bash experiments/gpu/engine_checks.sh --smoke  # on any CPU: tiny model, proves the script works
#
# Random bge-reranker-large, real pairs, end to end: fp32 (fidelity reference), FlagEmbedding-style
# fp16 and the fast engine's variants side by side in one process per collection, first at MS MARCO-
# like lengths (Vaswani, 41 queries × 100), then on MIRACL-yo (40 × 100). Carries the same inputs as
# run_checks.sh (.gpu/data, .gpu/tokenizers, .whl). Never fails the call; each collection has its own
# time limit and its JSON is rewritten after every cell.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SMOKE=0
EXTRA=()
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1 && EXTRA=(--smoke); done
OUT="${OUT:-$ROOT/runs/engine-checks$([ $SMOKE = 1 ] && echo -smoke)}"
mkdir -p "$OUT"
source "$ROOT/experiments/gpu/env.sh" >"$OUT/env.txt" 2>&1
{
  echo "rerank-bench engine checks: $(date -u +%FT%TZ) python=${PY:-none} DATA=$DATA OUT=$OUT smoke=$SMOKE"
  cat "$OUT/env.txt"; rm -f "$OUT/env.txt"
  if [ -z "$PY" ]; then echo "no python with torch found; set PYTHON=..."; exit 0; fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
  timeout -k 10 360 "$PY" experiments/gpu/engine_check.py "${EXTRA[@]}" --out "$OUT" --collection vaswani \
    --split test --queries 41 --cells fp32 flag fast fast-fp16 fast-full-last fast-gelu-epilogue fast-add-norm \
    fast-fused fast-host-only || echo "vaswani: exit status $?"
  timeout -k 10 150 "$PY" experiments/gpu/engine_check.py "${EXTRA[@]}" --out "$OUT" --collection miracl-yo-dev \
    --split dev --queries 40 --cells fast fast-fused flag || echo "miracl-yo-dev: exit status $?"
} 2>&1 | tee "$OUT/log.txt"
exit 0
