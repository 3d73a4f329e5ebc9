#!/usr/bin/env bash
# The one GPU benchmark command (see experiments/gpu/README.md). From the repository root:
#
#   bash experiments/gpu/run_checks.sh            # on the GPU box: writes to $OUT, ~5-7 minutes
#   bash experiments/gpu/run_checks.sh --smoke    # on any CPU: tiny model, proves the script works
#
# Inputs it reads (prepared by experiments/gpu/prepare.sh into the ignored folders .gpu/ and .whl/,
# which the device call must carry): $DATA (default .gpu/data: a copy of ../shared/data),
# $RERANK_BENCH_XLMR_TOKENIZER (default .gpu/tokenizers/xlm-roberta/tokenizer.json),
# $RERANK_BENCH_BERT_TOKENIZER_DIR (default .gpu/tokenizers/bert-base-uncased), pydantic wheels in .whl/.
# It never fails the call: every step is recorded as ok / failed / skipped, and the short table
# is printed last, even when the Python driver was killed by the time limit.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
SMOKE=0
for a in "$@"; do [ "$a" = "--smoke" ] && SMOKE=1; done

if [ -z "${OUT:-}" ]; then
  OUT="$ROOT/runs/gpu-checks$([ $SMOKE = 1 ] && echo -smoke)"
fi
mkdir -p "$OUT"
LOG="$OUT/log.txt"

source "$ROOT/experiments/gpu/env.sh" >"$OUT/env.txt" 2>&1
{
  echo "rerank-bench GPU checks: $(date -u +%FT%TZ) python=${PY:-none} DATA=$DATA OUT=$OUT smoke=$SMOKE"
  cat "$OUT/env.txt"; rm -f "$OUT/env.txt"
  if [ -z "$PY" ]; then echo "no python with torch found; set PYTHON=..."; exit 0; fi
  LIMIT=$([ $SMOKE = 1 ] && echo 900 || echo 440)
  timeout -k 15 "$LIMIT" "$PY" "$ROOT/experiments/gpu/run_checks.py" --out "$OUT" "$@"
  rc=$?
  [ $rc = 124 ] || [ $rc = 137 ] && echo "the driver hit the ${LIMIT} s limit and was stopped; results.json holds what finished"
  [ $rc != 0 ] && echo "driver exit status $rc"
} 2>&1 | tee "$LOG"
"$PY" "$ROOT/experiments/gpu/run_checks.py" --out "$OUT" --print-only 2>&1 | tee -a "$LOG"
exit 0
